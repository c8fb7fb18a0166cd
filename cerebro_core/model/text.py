"""Text towers for queries: open_clip text features computed on the tokens up to the last EOT."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def encode_text_truncated(model, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip text features computed on the tokens up to the last EOT only.

    Exact for CLIP's causal text transformer: padding after the EOT token never influences the
    EOT position, so cutting the sequence to its longest real length gives the same features
    (max |Δ| ~1e-6) at a fraction of the cost (short queries are ~8 tokens of 77)."""
    import open_clip

    if (not isinstance(model, open_clip.CLIP) or getattr(model, "text_pool_type", "argmax") != "argmax"
            or model.attn_mask is None):
        return model.encode_text(tokens)
    L = int(tokens.argmax(dim=-1).max()) + 1
    t = tokens[:, :L]
    try:
        cast = model.transformer.get_cast_dtype()
    except AttributeError:  # int8 dynamic-quantised MLPs have no float weight to read the dtype from
        cast = model.token_embedding.weight.dtype
    x = model.token_embedding(t).to(cast) + model.positional_embedding[:L].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:L, :L])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), t.argmax(dim=-1)]
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


class FastTextEncoder(torch.nn.Module):
    """Query-time text tower over the weights of an open_clip CLIP model.

    The same computation as ``CLIP.encode_text`` (a test holds fp32 to |Δ| < 1e-4), arranged for
    single short queries on a CPU:
      - tokens cut after the last EOT (exact under the causal mask);
      - attention through ``scaled_dot_product_attention(is_causal=True)`` with the q/k/v and
        output projections as plain ``nn.Linear`` layers;
      - ``int8=True``: every projection (attention and MLP) dynamically quantised to int8
        (fbgemm), a measured-accuracy speed-up — query vectors keep cosine ≥ 0.999 to fp32.
    """

    def __init__(self, model, int8: bool = False):
        super().__init__()
        import copy

        self.token_embedding = copy.deepcopy(model.token_embedding)
        self.register_buffer("positional_embedding", model.positional_embedding.detach().clone())
        self.ln_final = copy.deepcopy(model.ln_final)
        proj = model.text_projection
        if isinstance(proj, torch.nn.Linear):
            self.proj = copy.deepcopy(proj)
        else:
            lin = torch.nn.Linear(proj.shape[0], proj.shape[1], bias=False)
            lin.weight.data.copy_(proj.detach().T)
            self.proj = lin
        self.blocks = torch.nn.ModuleList()
        for blk in model.transformer.resblocks:
            a = blk.attn
            d = a.embed_dim
            qkv = torch.nn.Linear(d, 3 * d, bias=a.in_proj_bias is not None)
            qkv.weight.data.copy_(a.in_proj_weight.detach())
            if a.in_proj_bias is not None:
                qkv.bias.data.copy_(a.in_proj_bias.detach())
            out = torch.nn.Linear(d, d, bias=a.out_proj.bias is not None)
            out.weight.data.copy_(a.out_proj.weight.detach())
            if a.out_proj.bias is not None:
                out.bias.data.copy_(a.out_proj.bias.detach())
            m = torch.nn.Module()
            m.ln_1, m.ln_2 = copy.deepcopy(blk.ln_1), copy.deepcopy(blk.ln_2)
            m.ls_1, m.ls_2 = copy.deepcopy(blk.ls_1), copy.deepcopy(blk.ls_2)
            m.qkv, m.out, m.mlp = qkv, out, copy.deepcopy(blk.mlp)
            m.heads = a.num_heads
            self.blocks.append(m)
        self.eval()
        if int8:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.ao.quantization.quantize_dynamic(self, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        self.int8 = int8

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Features of the (host) ``tokens``, computed on the tower's device, returned on the host."""
        L = int(tokens.numpy().argmax(-1).max()) + 1  # on the host, before the tokens move
        t = tokens[:, :L].to(self.positional_embedding.device)
        x = self.token_embedding(t) + self.positional_embedding[:L]
        B = x.shape[0]
        for m in self.blocks:
            h = m.ln_1(x)
            q, k, v = m.qkv(h).view(B, L, 3, m.heads, -1).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + m.ls_1(m.out(a.transpose(1, 2).reshape(B, L, -1)))
            x = x + m.ls_2(m.mlp(m.ln_2(x)))
        x = self.ln_final(x)
        x = x[torch.arange(B, device=x.device), t.argmax(dim=-1)]
        return self.proj(x).cpu()


def query_tower_placement(int8: bool, cuda: bool) -> tuple[str, bool]:
    """(device, int8) of the search query's text tower, where it is fastest: the GPU when one is
    visible (fp32, exact), else the CPU with int8 projections when ``int8`` (measured: 15 ms against
    37 ms fp32 per ViT-B-32 query on 2 threads). Before, a visible GPU only turned int8 off and the
    tower stayed on the CPU in fp32: 2.5x slower queries on GPU hosts."""
    return ("cuda", False) if cuda else ("cpu", int8)


def query_tower(model, int8: bool, cuda: bool) -> FastTextEncoder:
    device, q = query_tower_placement(int8, cuda)
    return FastTextEncoder(model, int8=q).to(device)
