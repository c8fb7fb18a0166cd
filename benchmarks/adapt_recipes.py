"""Recipe exploration for the adapt quality goal: the CIFAR-10 protocol of
benchmarks/adapt_cifar.py re-implemented on in-memory tensors (minutes per recipe instead of the
stage's ~10), used to choose which recipes are worth running through the real stage.

    .venv/bin/python benchmarks/adapt_recipes.py pretrain --model cerebro-rn-32 --aug weak --epochs 40 --lr 1e-3 --seeds 0 --save
    .venv/bin/python benchmarks/adapt_recipes.py loop --model cerebro-rn-32 --pre weak_40 --seeds 0 --soft --T 0.5 --thr 0 --k 250 --replay 1.0

Noisy student (a new model pretrained from random weights on the pairs + the teacher's
pseudo-captioned pool images) and its control (the pairs alone, same steps):

    .venv/bin/python benchmarks/adapt_recipes.py student --pre rrc_40 --seeds 0 1 2 [--control]

Diagnostic bounds (the only place the pool's ground truth trains anything; never in the stage):
what the loop would gain with labels of a given precision, and what the frozen features allow.

    .venv/bin/python benchmarks/adapt_recipes.py pretrain --aug rrc --epochs 40 --lr 1e-3 --seeds 0 1 2 --save
    .venv/bin/python benchmarks/adapt_recipes.py loop --pre rrc_40 --seeds 0 1 2 --lr 5e-4 --aug weak --oracle-noise 0.2
    .venv/bin/python benchmarks/adapt_recipes.py probe --pre rrc_40 --seeds 0 1 2

Same splits as the benchmark (per class by sorted file name: 100 pretraining pairs + 80 COCO
pairs, 250 pool, 50 validation, 100 test). Pool labels are read only to print pseudo-label
precision. Extra vision towers (convolutional) are registered from EXTRA_CONFIGS below.
Results are in docs/BENCHMARKS.md (adapt, session 3). Checkpoints go to $CEREBRO_RECIPES_DIR
(default /tmp/cerebro-recipes).
"""
import os
import tempfile
import csv, json, sys, time, math, random, argparse
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
from PIL import Image
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from cerebro_core.adapt.select import select as select_pseudo_labels
from cerebro_core.model.factory import create
from cerebro_core.train.loop import cosine_lr, param_groups  # the trainer's own
import open_clip
from open_clip.loss import ClipLoss
EXTRA_CONFIGS = {
    "cerebro-rn18-32": {"embed_dim": 128, "vision_cfg": {"image_size": 32, "timm_model_name": "resnet18", "timm_model_pretrained": False, "timm_pool": "avg", "timm_proj": "linear"},
                        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3}},
    "cerebro-rn10t-32": {"embed_dim": 128, "vision_cfg": {"image_size": 32, "timm_model_name": "resnet10t", "timm_model_pretrained": False, "timm_pool": "avg", "timm_proj": "linear"},
                         "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3}},
    "cerebro-rn-32": {"embed_dim": 128, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 32},
                      "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3}},
}
_cfg_dir = Path(tempfile.mkdtemp(prefix="cerebro-recipe-cfg-"))
for _n, _c in EXTRA_CONFIGS.items():
    (_cfg_dir / f"{_n}.json").write_text(json.dumps(_c))
open_clip.add_model_config(_cfg_dir)
OUT = Path(os.environ.get("CEREBRO_RECIPES_DIR", "/tmp/cerebro-recipes"))
torch.set_num_threads(2)
SH = REPO.parent / "shared" / "data"
CIFAR = SH / "cifar10_animals"
TEMPL = ["a photo of a {}.", "a blurry photo of a {}.", "a {} in the wild.", "a close-up photo of a {}.", "a small {}.", "a picture of a {} outdoors."]
PROMPTS = ["a photo of a {}.", "a blurry photo of a {}.", "a {} in the wild.", "a close-up photo of a {}."]
MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1,3,1,1); STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1,3,1,1)

def load_img(p, size=32):
    im = Image.open(p).convert("RGB")
    if im.size != (size, size):
        w, h = im.size; s = min(w, h); im = im.crop(((w-s)//2, (h-s)//2, (w-s)//2+s, (h-s)//2+s)).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im).copy()).permute(2,0,1)

def data():
    rows = list(csv.DictReader((CIFAR/"labels.csv").open()))
    by = {}
    for r in rows: by.setdefault(r["label"], []).append(r)
    classes = sorted(by)
    parts = {"pretrain": (0,100), "pool": (100,350), "val": (350,400), "test": (400,500)}
    out = {}
    for n,(a,b) in parts.items():
        X, Y = [], []
        for c in classes:
            for r in sorted(by[c], key=lambda r: r["path"])[a:b]:
                X.append(load_img(CIFAR/r["path"])); Y.append(classes.index(c))
        out[n] = (torch.stack(X), torch.tensor(Y))
    coco = SH/"coco_captions_mini"
    cx, ct = [], []
    for line in (coco/"captions.jsonl").read_text().splitlines()[:80]:
        rec = json.loads(line); cx.append(load_img(coco/rec["image"])); ct.append(rec["captions"][0].strip())
    return classes, out, torch.stack(cx), ct

def norm(x): return (x.float()/255 - MEAN)/STD

def weak(x, g):
    # random crop with 4px reflect padding + hflip (on uint8 batch)
    n = x.shape[0]; xp = F.pad(x.float(), (4,4,4,4), mode="reflect")
    i = torch.randint(0, 9, (n,), generator=g); j = torch.randint(0, 9, (n,), generator=g)
    out = torch.stack([xp[k, :, i[k]:i[k]+32, j[k]:j[k]+32] for k in range(n)])
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out

def strong(x, g):
    out = weak(x, g)/255
    n = out.shape[0]
    b = 1 + (torch.rand(n,1,1,1, generator=g)-0.5)*0.8; c = 1 + (torch.rand(n,1,1,1, generator=g)-0.5)*0.8
    m = out.mean((1,2,3), keepdim=True); out = ((out - m)*c + m)*b
    gray = torch.rand(n, generator=g) < 0.2; out[gray] = out[gray].mean(1, keepdim=True).expand(-1,3,-1,-1)
    # cutout 12px
    ci = torch.randint(0, 32, (n,), generator=g); cj = torch.randint(0, 32, (n,), generator=g)
    for k in range(n):
        out[k, :, max(0,ci[k]-6):ci[k]+6, max(0,cj[k]-6):cj[k]+6] = 0.5
    return out.clamp(0,1)*255

@torch.no_grad()
def cls_emb(model, tok, classes):
    e = []
    for c in classes:
        f = F.normalize(model.encode_text(tok([t.format(c) for t in PROMPTS])).float(), dim=-1).mean(0)
        e.append(F.normalize(f, dim=-1))
    return torch.stack(e)

@torch.no_grad()
def feats(model, X, bs=500):
    model.eval()
    return torch.cat([F.normalize(model.encode_image(norm(X[i:i+bs])).float(), dim=-1) for i in range(0, len(X), bs)])

@torch.no_grad()
def acc(model, tok, classes, X, Y):
    return float(((feats(model, X) @ cls_emb(model, tok, classes).T).argmax(1) == Y).float().mean())

def sched(opt, warm, total):
    """The trainer's own warmup + cosine schedule (as a multiplier of the base lr)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, 1.0, warm, total))



def pretrain(seed, epochs=20, aug="none", lr=2e-3, bs=64, model_name="cerebro-tiny-vit-32", D=None,
             extra=None, steps=None):
    """Contrastive pretraining from random weights on the protocol's pairs (+ `extra` (images,
    captions) pairs, e.g. pseudo-captioned pool images for a noisy student); `steps` overrides
    epochs × batches so that a control can match a student's step count."""
    classes, d, cx, ct = D
    torch.manual_seed(seed); g = torch.Generator().manual_seed(seed)
    b = create(model_name, aug_cfg={"scale": (0.5, 1.0)} if aug == "rrc" else ({"scale": (0.35, 1.0)} if aug == "rrc35" else None)); model, tok = b.model, b.tokenizer
    pil = [Image.fromarray(x.permute(1,2,0).numpy()) for x in torch.cat([d["pretrain"][0], cx])] if aug.startswith("rrc") else None
    X = torch.cat([d["pretrain"][0], cx]); Yt = d["pretrain"][1]
    caps = [TEMPL[k % 6].format(classes[int(y)]) for k, y in enumerate(Yt)] + ct
    if extra is not None:
        X = torch.cat([X, extra[0]]); caps = caps + list(extra[1])
        if pil is not None:
            pil += [Image.fromarray(x.permute(1,2,0).numpy()) for x in extra[0]]
    T = tok(caps)
    n = len(X); steps = steps or epochs * (n // bs)
    epochs = math.ceil(steps / (n // bs))
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    sc = sched(opt, 20, steps); loss_fn = ClipLoss()
    s = 0
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - bs + 1, bs):
            idx = perm[i:i+bs]; model.train()
            if pil is not None:
                x = torch.stack([b.preprocess_train(pil[int(j)]) for j in idx])
            else:
                x = X[idx]; x = weak(x, g) if aug == "weak" else x.float()
                x = (x/255 - MEAN)/STD
            o = model(x, T[idx])
            loss = loss_fn(o["image_features"], o["text_features"], o["logit_scale"])
            opt.zero_grad(); loss.backward(); opt.step(); sc.step(); s += 1
            with torch.no_grad(): model.logit_scale.clamp_(0, math.log(100))
            if s == steps:
                return model, tok
    return model, tok


def probs_of(model, tok, classes, X, tta=False):
    cls = cls_emb(model, tok, classes); s = float(model.logit_scale.detach().exp())
    f = feats(model, X)
    p = torch.softmax(s * f @ cls.T, 1)
    if tta:
        p = 0.5 * (p + torch.softmax(s * feats(model, X.flip(-1)) @ cls.T, 1))
    return p

def select(p, thr, k, mode="fixed"):
    """The stage's selection (cerebro_core.adapt.select), returned grouped by class, most
    confident first — the order the recipes' batch sampling was measured with."""
    idx, lab, conf = select_pseudo_labels(p.numpy(), thr, k, mode)
    order = np.lexsort((-conf, lab))
    return torch.from_numpy(idx[order]), torch.from_numpy(lab[order]), torch.from_numpy(conf[order])

def run(seed, model, tok, D, a):
    classes, d, cx, ct = D
    g = torch.Generator().manual_seed(seed + 100); torch.manual_seed(seed + 100)
    Xp, Yp = d["pool"]
    # replay pairs = the pretrain pairs
    RX = torch.cat([d["pretrain"][0], cx]); RT = tok([TEMPL[k % 6].format(classes[int(y)]) for k, y in enumerate(d["pretrain"][1])] + ct)
    rows = [(0, None, None, acc(model, tok, classes, *d["val"]), acc(model, tok, classes, *d["test"]))]
    print(f"  it 0 val {rows[0][3]:.3f} test {rows[0][4]:.3f}", flush=True)
    teacher = model
    for it in range(1, a.iters + 1):
        p = probs_of(teacher, tok, classes, Xp, a.tta)
        if a.oracle_noise is not None:  # diagnostic bound only: ground truth, a fraction redrawn at random
            idx = torch.arange(len(Xp)); lab = Yp.clone(); conf = torch.ones(len(idx))
            redraw = torch.rand(len(lab), generator=g) < a.oracle_noise
            lab[redraw] = torch.randint(0, len(classes), (int(redraw.sum()),), generator=g)
        elif a.control:
            idx = torch.randperm(len(Xp), generator=g)[:a.k * len(classes)]
            lab = torch.randint(0, len(classes), (len(idx),), generator=g); conf = torch.ones(len(idx))
        else:
            idx, lab, conf = select(p, a.thr, a.k, a.threshold_mode)
        prec = float((lab == Yp[idx]).float().mean()) if len(idx) else 0
        cls = cls_emb(model, tok, classes).detach()
        for n_, p_ in model.named_parameters():
            p_.requires_grad_(n_.startswith("visual."))
        opt = torch.optim.AdamW(param_groups(model, a.wd), lr=a.lr, betas=(0.9, 0.98), eps=1e-6)
        sc = sched(opt, 5, a.steps)
        clip = ClipLoss()
        scale = float(model.logit_scale.exp())
        soft = p[idx] if a.soft else None
        for s in range(a.steps):
            model.train()
            b = torch.randint(0, len(idx), (a.bs,), generator=g)
            xb = Xp[idx[b]]
            x = strong(xb, g) if a.aug == "strong" else (weak(xb, g) if a.aug == "weak" else xb.float())
            f = F.normalize(model.encode_image((x/255 - MEAN)/STD), dim=-1)
            logits = scale * f @ cls.T
            if a.control_replay_only:
                loss = 0 * logits.sum()
            elif soft is not None:
                tgt = soft[b] ** (1 / a.T); tgt = tgt / tgt.sum(1, keepdim=True)
                loss = -(tgt * F.log_softmax(logits, 1)).sum(1).mean()
            else:
                loss = F.cross_entropy(logits, lab[b], label_smoothing=a.ls)
            if a.replay:
                rb = torch.randint(0, len(RX), (a.bs,), generator=g)
                xr = weak(RX[rb], g)
                fi = F.normalize(model.encode_image((xr/255 - MEAN)/STD), dim=-1)
                with torch.no_grad():
                    ft = F.normalize(model.encode_text(RT[rb]), dim=-1)
                loss = loss + a.replay * clip(fi, ft, model.logit_scale.exp())
            opt.zero_grad(); loss.backward(); opt.step(); sc.step()
        teacher = model
        v, t = acc(model, tok, classes, *d["val"]), acc(model, tok, classes, *d["test"])
        rows.append((it, len(idx), prec, v, t))
        print(f"  it {it} sel {len(idx)} prec {prec:.3f} val {v:.3f} test {t:.3f}", flush=True)
    return rows



def main_pretrain(argv):
    ap = argparse.ArgumentParser(); ap.add_argument("--epochs", type=int, default=20); ap.add_argument("--aug", default="none")
    ap.add_argument("--lr", type=float, default=2e-3); ap.add_argument("--seeds", type=int, nargs="+", default=[0]); ap.add_argument("--model", default="cerebro-tiny-vit-32")
    ap.add_argument("--save", action="store_true")
    a = ap.parse_args(argv)
    D = data(); classes, d, _, _ = D
    OUT.mkdir(parents=True, exist_ok=True)
    for seed in a.seeds:
        t = time.time()
        m, tok = pretrain(seed, a.epochs, a.aug, a.lr, model_name=a.model, D=D)
        print(f"seed {seed} ep {a.epochs} aug {a.aug} lr {a.lr} {a.model}: val {acc(m,tok,classes,*d['val']):.3f} test {acc(m,tok,classes,*d['test']):.3f} pool {acc(m,tok,classes,*d['pool']):.3f}  {time.time()-t:.0f}s", flush=True)
        if a.save: torch.save(m.state_dict(), OUT / f"pre_{a.model}_{a.aug}_{a.epochs}_{seed}.pt")


def main_loop(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--pre", default="none_20"); ap.add_argument("--model", default="cerebro-tiny-vit-32")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--iters", type=int, default=3); ap.add_argument("--thr", type=float, default=0.3); ap.add_argument("--k", type=int, default=150)
    ap.add_argument("--threshold-mode", default="fixed", choices=["fixed", "flexmatch"]); ap.add_argument("--tta", action="store_true")
    ap.add_argument("--steps", type=int, default=60); ap.add_argument("--bs", type=int, default=64); ap.add_argument("--lr", type=float, default=1e-4); ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--aug", default="strong"); ap.add_argument("--soft", action="store_true"); ap.add_argument("--T", type=float, default=1.0)
    ap.add_argument("--ls", type=float, default=0.0); ap.add_argument("--replay", type=float, default=0.0)
    ap.add_argument("--control", action="store_true"); ap.add_argument("--control-replay-only", action="store_true")
    ap.add_argument("--oracle-noise", type=float, default=None,
                    help="diagnostic bound, not a recipe: train on the pool's ground truth with this fraction of "
                         "labels redrawn uniformly (0 = clean), to measure what label precision the loop needs")
    a = ap.parse_args(argv)
    D = data(); classes = D[0]
    res = []
    for seed in a.seeds:
        b = create(a.model); m, tok = b.model, b.tokenizer
        m.load_state_dict(torch.load(OUT / f"pre_{a.model}_{a.pre}_{seed}.pt", weights_only=True))
        print(f"seed {seed} {vars(a)}", flush=True)
        rows = run(seed, m, tok, D, a)
        res.append(rows)
    import statistics as st
    for it in range(len(res[0])):
        print(f"MEAN it {it}: val {st.mean(r[it][3] for r in res):.3f} test {st.mean(r[it][4] for r in res):.3f}  d_test {st.mean(r[it][4]-r[0][4] for r in res):+.3f}")


def main_student(argv):
    """Noisy student: a new model pretrained from random weights on the protocol's pairs plus the
    pool images captioned with the teacher's pseudo-labels (the stage's selection, a random
    template each), under the same augmentation; the control is the same pretraining on the pairs
    alone for the same number of steps."""
    ap = argparse.ArgumentParser(); ap.add_argument("--pre", default="rrc_40"); ap.add_argument("--model", default="cerebro-tiny-vit-32")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0]); ap.add_argument("--thr", type=float, default=0.4); ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=40); ap.add_argument("--lr", type=float, default=1e-3); ap.add_argument("--aug", default="rrc")
    ap.add_argument("--control", action="store_true"); ap.add_argument("--tta", action="store_true")
    a = ap.parse_args(argv)
    D = data(); classes, d, cx, _ = D
    for seed in a.seeds:
        t0 = time.time()
        b = create(a.model); m, tok = b.model, b.tokenizer
        m.load_state_dict(torch.load(OUT / f"pre_{a.model}_{a.pre}_{seed}.pt", weights_only=True))
        v0, t0_ = acc(m, tok, classes, *d["val"]), acc(m, tok, classes, *d["test"])
        Xp, Yp = d["pool"]
        idx, lab, _ = select(probs_of(m, tok, classes, Xp, a.tta), a.thr, a.k)
        prec = float((lab == Yp[idx]).float().mean())
        g = random.Random(seed)
        caps = [g.choice(TEMPL).format(classes[int(c)]) for c in lab]
        n_pairs = len(d["pretrain"][0]) + len(cx)
        steps = a.epochs * ((n_pairs + len(idx)) // 64)
        extra = None if a.control else (Xp[idx], caps)
        s, tok2 = pretrain(seed + 1000, a.epochs, a.aug, a.lr, model_name=a.model, D=D, extra=extra, steps=steps)
        v, t = acc(s, tok2, classes, *d["val"]), acc(s, tok2, classes, *d["test"])
        print(f"seed {seed} {'control (pairs only)' if a.control else 'student'}: selected {len(idx)} precision {prec:.3f} steps {steps} | "
              f"teacher val {v0:.3f} test {t0_:.3f} -> val {v:.3f} test {t:.3f} (d_test {t - t0_:+.3f})  {time.time() - t0:.0f}s", flush=True)


def main_probe(argv):
    """Diagnostic bounds on the pretrained models (ground truth of the pool used here only): what a
    classifier on the frozen image features could reach with *true* pool labels (linear probe,
    class centroids), and what a teacher made of flip-TTA or an ensemble of the seeds reaches."""
    ap = argparse.ArgumentParser(); ap.add_argument("--pre", default="rrc_40"); ap.add_argument("--model", default="cerebro-tiny-vit-32")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args(argv)
    D = data(); classes, d, _, _ = D
    top1 = lambda logits, y: float((logits.argmax(1) == y).float().mean())
    ens = {k: 0 for k in ("val", "test", "pool")}
    for seed in a.seeds:
        b = create(a.model); m, tok = b.model, b.tokenizer
        m.load_state_dict(torch.load(OUT / f"pre_{a.model}_{a.pre}_{seed}.pt", weights_only=True))
        f = {k: feats(m, d[k][0]) for k in ("pool", "val", "test")}
        Yp = d["pool"][1]
        cent = F.normalize(torch.stack([f["pool"][Yp == c].mean(0) for c in range(len(classes))]), dim=-1)
        W = torch.zeros(f["pool"].shape[1], len(classes), requires_grad=True); bias = torch.zeros(len(classes), requires_grad=True)
        opt = torch.optim.LBFGS([W, bias], max_iter=500)
        def closure():
            opt.zero_grad(); loss = F.cross_entropy(10 * f["pool"] @ W + bias, Yp) + 1e-2 * (W ** 2).sum(); loss.backward(); return loss
        opt.step(closure)
        row = []
        for k in ("val", "test"):
            p, pt = probs_of(m, tok, classes, d[k][0]), probs_of(m, tok, classes, d[k][0], tta=True)
            ens[k] = ens[k] + p
            with torch.no_grad():
                row.append(f"{k}: zero-shot {top1(p, d[k][1]):.3f} flip-TTA {top1(pt, d[k][1]):.3f} "
                           f"oracle centroids {top1(f[k] @ cent.T, d[k][1]):.3f} oracle linear probe {top1(10 * f[k] @ W + bias, d[k][1]):.3f}")
        pp = probs_of(m, tok, classes, d["pool"][0]); ens["pool"] = ens["pool"] + pp
        idx, lab, _ = select(pp, 0.0, 50)
        print(f"seed {seed}: " + " | ".join(row) + f" | pool top-50/class precision {float((lab == Yp[idx]).float().mean()):.3f}", flush=True)
    idx, lab, _ = select(ens["pool"] / len(a.seeds), 0.0, 50)
    print(f"ensemble of seeds {a.seeds}: val {top1(ens['val'], d['val'][1]):.3f} test {top1(ens['test'], d['test'][1]):.3f} "
          f"pool top-50/class precision {float((lab == d['pool'][1][idx]).float().mean()):.3f}")


if __name__ == "__main__":
    {"pretrain": main_pretrain, "loop": main_loop, "probe": main_probe, "student": main_student}[sys.argv[1]](sys.argv[2:])
