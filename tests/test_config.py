"""Config: YAML files, --set overrides, and every error path (exit 2, message names the key)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cerebro_core.config import CerebroConfig, ConfigError, ReplayStudent, load_config
from cerebro_core.config_yaml import parse_override
from helpers import REPO

CEREBRO = [str(Path(sys.executable).parent / "cerebro")]


def test_shipped_configs_load():
    demo = load_config(REPO / "configs/demo.yaml")
    assert demo.name == "demo" and demo.train.precision == "fp32" and demo.download.url_list.endswith("urls.tsv")
    real = load_config(REPO / "configs/cc3m-vitb32.yaml")
    t = real.train
    assert real.compute.nproc_per_node == 4 and real.compute.nnodes == 1
    assert (t.model, t.batch_size, t.lr, t.weight_decay, t.warmup_steps, t.epochs, t.precision) == (
        "ViT-B-32", 480, 5e-4, 0.2, 10000, 32, "bf16",
    )
    assert real.download.input_format == "cc3m_tsv" and real.download.image_size == 256


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        REPO / "configs/demo.yaml",
        ["train.batch_size=7", "adapt.student.lr_scale=0.25", "download.url_list=/x/y.tsv", "train.grad_clip=1.5",
         "adapt.templates=['a {}', 'the {}']", "serve.port=9001", "compute.nproc_per_node=auto"],
    )
    assert cfg.train.batch_size == 7 and cfg.adapt.student.lr_scale == 0.25
    assert cfg.download.url_list == "/x/y.tsv" and cfg.train.grad_clip == 1.5
    assert cfg.adapt.templates == ["a {}", "the {}"] and cfg.serve.port == 9001


def test_defaults_bind_loopback_and_mask_secrets():
    cfg = load_config(None, ["storage.secret_access_key=hunter2"])
    assert cfg.serve.host == "127.0.0.1"
    dumped = cfg.masked()
    assert "hunter2" not in str(dumped) and dumped["storage"]["secret_access_key"] == "**********"
    assert cfg.storage.secret_access_key.get_secret_value() == "hunter2"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=abc", "train.batch_size: Input should be a valid integer"),
        ("train.batch_sise=4", "train.batch_sise: Extra inputs are not permitted"),
        ("nosuchsection.key=1", "nosuchsection: Extra inputs are not permitted"),
        ("train.precision=fp64", "train.precision: Input should be 'bf16', 'fp16' or 'fp32'"),
        ("download.processes=0", "download.processes: Input should be greater than or equal to 1"),
        ("serve.port=70000", "serve.port: Input should be less than or equal to 65535"),
        ("adapt.student.budget=-1", "adapt.student.budget: Input should be greater than 0"),
        ("adapt.student.kind=finetune", "adapt.student.kind: Input tag 'finetune' found using 'kind' does not match"),
        ("adapt.student.folds=2", "adapt.student.folds: Extra inputs are not permitted"),
        ("adapt.student=scratch", None),
        ("train.batch_size.x=1", "train.batch_size: is not a section"),
        ("train.augment.scale=[0.0, 1.0]", "train.augment.scale: Value error, must be (low, high)"),
        ("train.augment.flip=true", "train.augment.flip: Extra inputs are not permitted"),
        ("train.augment.color_jitter_prob=0.8", "color_jitter: must be 4 values"),
        ("train.augment.color_jitter=0.4", "color_jitter: open_clip applies it only with color_jitter_prob"),
        ("adapt.student.augment.re_prob=0.3", "re_prob: open_clip applies it only with use_timm"),
        ("index.shard_runner=spark", "index.shard_runner.kind: Input tag 'spark' found"),
        ("index.shard_runner.adress=tcp://h:8786", "index.shard_runner.adress: Extra inputs are not permitted"),
        ("index.shards=0", "index.shards: Input should be greater than or equal to 1"),
        ("index.kind=ivfpq_mmap", "index.kind: Value error, unknown index kind 'ivfpq_mmap'; known: auto, flat, hnsw"),
    ],
)
def test_bad_override_names_the_key(override, message):
    if message is None:  # a good one, for contrast: the string form of a typed alternative
        assert load_config(REPO / "configs/demo.yaml", [override]).adapt.student.kind == "scratch"
        return
    with pytest.raises(ConfigError) as ei:
        load_config(REPO / "configs/demo.yaml", [override])
    assert message in str(ei.value)


def test_shard_runner_by_name_or_by_its_keys():
    r = load_config(REPO / "configs/demo.yaml", ["index.shard_runner=dask"]).index.shard_runner
    assert (r.kind, r.address, r.n_workers) == ("dask", None, 2)
    r = load_config(REPO / "configs/demo.yaml", ["index.shard_runner.address=tcp://h:8786"]).index.shard_runner
    assert (r.kind, r.address) == ("dask", "tcp://h:8786")
    assert load_config(REPO / "configs/demo.yaml", []).index.shard_runner.kind == "threads"


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("train: {batch_size: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epochz: Extra inputs are not permitted"):
        load_config(tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("train.batch_size")


def test_env_expansion(monkeypatch, tmp_path):
    monkeypatch.setenv("CEREBRO_HOME", str(tmp_path))
    cfg = load_config(REPO / "configs/demo.yaml")
    assert cfg.storage.root == f"{tmp_path}/data"


def test_section_hash_tracks_only_its_section():
    a = CerebroConfig()
    b = load_config(None, ["adapt.iterations=5"])
    assert a.section_hash("download") == b.section_hash("download")
    assert a.section_hash("adapt") != b.section_hash("adapt")


@pytest.mark.parametrize("command", [["info"], ["download"]])
def test_cli_exits_2_before_running(command, tmp_path):
    """Every command validates the config first: exit 2, message names the key, nothing created."""
    env = {"CEREBRO_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        CEREBRO + command + ["--config", str(REPO / "configs/demo.yaml"), "--set", "train.batch_size=abc"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "train.batch_size: Input should be a valid integer" in proc.stderr
    assert not (tmp_path / "home").exists()


def test_augment_reaches_open_clip_train_transform():
    """``train.augment`` is open_clip's AugmentationCfg: the training transform it builds uses it."""
    from cerebro_core.model.factory import create

    cfg = load_config(REPO / "configs/adapt-cifar.yaml", ["train.augment.scale=[0.4, 1.0]"])
    assert cfg.train.augment.open_clip_cfg() == {"scale": (0.4, 1.0), "use_timm": False}
    b = create(cfg.train.model, aug_cfg=cfg.train.augment.open_clip_cfg())
    crop = b.preprocess_train.transforms[0]
    assert type(crop).__name__ == "RandomResizedCrop" and tuple(crop.scale) == (0.4, 1.0)
    default = create(cfg.train.model, aug_cfg=load_config(REPO / "configs/demo.yaml").train.augment.open_clip_cfg())
    assert tuple(default.preprocess_train.transforms[0].scale) == (0.9, 1.0)  # open_clip's own default


def test_the_real_run_config_is_complete():
    """CC3M → ViT-B-32 → 8 wildlife datasets → index: every stage has its inputs named."""
    real = load_config(REPO / "configs/cc3m-vitb32.yaml")
    assert real.compute.device == "cuda" and real.compute.nproc_per_node == 4
    assert len(real.adapt.sources) == 8 and len({s.name for s in real.adapt.sources}) == 8
    assert real.adapt.annotated_validation > 0 and real.adapt.annotated_test > 0  # from the collections' annotations
    assert all(s.metadata and s.metadata.endswith(f"/{s.name}/metadata.json") for s in real.adapt.sources)
    assert [s.name for s in real.index.sources][:8] == [s.name for s in real.adapt.sources]
    assert any(s.name == "videos" for s in real.index.sources)
    from cerebro_core.data.vocab import load_vocabulary

    names = load_vocabulary(str(REPO / real.adapt.vocabulary))
    assert len(names) == 304 and "red fox" in names and "antelope or duiker" in names and "blank" not in names


def test_shipped_vocabulary_is_built_from_the_shared_name_lists(shared_data, tmp_path):
    out = tmp_path / "vocab.txt"
    subprocess.run([sys.executable, str(REPO / "scripts/build_vocabulary.py"), str(shared_data / "species_names"),
                    str(out)], check=True, capture_output=True)
    assert out.read_text() == (REPO / "configs/vocab/wildlife.txt").read_text()


def test_old_cluster_keys_fail_naming_the_new_ones():
    for key in ("nproc_per_node=2", "nnodes=2", "node_rank=1", "rdzv_endpoint=h:1", "rdzv_backend=c10d"):
        with pytest.raises(ConfigError) as e:
            load_config(REPO / "configs/demo.yaml", [f"train.{key}"])
        name = key.split("=")[0]
        assert f"train.{name} moved to compute.{name}" in str(e.value)
    with pytest.raises(ConfigError, match="compute: Value error, rdzv_endpoint: required"):
        load_config(REPO / "configs/demo.yaml", ["compute.nnodes=2"])
    with pytest.raises(ConfigError, match="node_rank: 2 is not below nnodes"):
        load_config(REPO / "configs/demo.yaml", ["compute.nnodes=2", "compute.node_rank=2", "compute.rdzv_endpoint=h:1"])
    with pytest.raises(ConfigError, match="compute.device"):
        load_config(REPO / "configs/demo.yaml", ["compute.device=tpu"])


@pytest.mark.parametrize("key", ["adapt.objective=vocab_ce", "adapt.ema_teacher=0.5", "adapt.student_targets=soft",
                                 "adapt.label_ensemble=true", "adapt.extra_teachers=['2']",
                                 "adapt.threshold_mode=flexmatch", "adapt.cross_fit_folds=2", "train.finetune.steps=10"])
def test_removed_recipe_flags_fail_naming_the_key(key):
    """The adapt recipe flags measured to lose are gone (docs/BENCHMARKS.md keeps their numbers);
    an old config fails at load, naming the key."""
    name = key.split("=")[0].rsplit(".", 1)[0] if key.startswith("train.finetune") else key.split("=")[0]
    with pytest.raises(ConfigError, match=f"{name}: Extra inputs are not permitted"):
        load_config(REPO / "configs/demo.yaml", [key])


def test_every_shipped_config_runs_the_default_recipe():
    """No shipped config sets a student: demo, the real run and the benchmark's protocol all run
    the default (replay) student."""
    import yaml

    for path in sorted((REPO / "configs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        assert "student" not in (raw.get("adapt") or {}), path.name
        assert load_config(path).adapt.student == ReplayStudent(), path.name


def test_serve_token_comes_from_the_environment_and_never_shows(monkeypatch):
    monkeypatch.setenv("CEREBRO_TEST_TOKEN", "a-token-long-enough-1234")
    cfg = load_config(REPO / "configs/demo.yaml", ["serve.token=${CEREBRO_TEST_TOKEN}"])
    assert cfg.serve.token.get_secret_value() == "a-token-long-enough-1234"
    assert "a-token-long-enough-1234" not in str(cfg.masked()) and cfg.masked()["serve"]["token"] == "**********"
    monkeypatch.delenv("CEREBRO_TEST_TOKEN")
    for value, msg in (("${CEREBRO_TEST_TOKEN}", "${CEREBRO_TEST_TOKEN} is not set"), ("short", "at least 16 characters")):
        with pytest.raises(ConfigError) as ei:
            load_config(REPO / "configs/demo.yaml", [f"serve.token={value}"])
        assert str(ei.value).startswith("serve.token:") and msg in str(ei.value)


def test_an_unset_variable_fails_at_load_naming_it_and_the_key(monkeypatch, tmp_path):
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["storage.root=${NOPE}/x"])
    assert str(ei.value).startswith("storage.root:") and "${NOPE} is not set" in str(ei.value)
    (tmp_path / "c.yaml").write_text("index:\n  sources:\n    - {name: a, path: '${NOPE}/a'}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "c.yaml")
    assert str(ei.value).startswith("index.sources[0].path:") and "${NOPE}" in str(ei.value)
    assert load_config(None, ["storage.root=${NOPE:-/data}/x"]).storage.root == "/data/x"
    monkeypatch.setenv("NOPE", "/srv")
    assert load_config(None, ["storage.root=${NOPE}/x"]).storage.root == "/srv/x"


BOMB = """a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
"""


def test_config_files_that_are_not_configs_fail_in_one_line(tmp_path):
    """An alias bomb (10^8 values once expanded), a recursive alias, a directory, a binary file and
    a device are refused at once, one line each, never built or read to the end."""
    (tmp_path / "bomb.yaml").write_text(BOMB)
    (tmp_path / "loop.yaml").write_text("train: &t\n  self: *t\n")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "dir.yaml").mkdir()
    for name, msg in (("bomb.yaml", "once its aliases are expanded"), ("loop.yaml", "a recursive alias"),
                      ("binary.yaml", "not UTF-8 text"), ("dir.yaml", "not a regular file"),
                      ("/dev/zero", "not a regular file")):
        with pytest.raises(ConfigError) as ei:
            load_config(tmp_path / name)
        assert msg in str(ei.value) and "\n" not in str(ei.value), (name, str(ei.value))
    (tmp_path / "bad.yaml").write_text("train: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML \(line \d+, column \d+\)") as ei:
        load_config(tmp_path / "bad.yaml")
    assert "\n" not in str(ei.value)
    r = subprocess.run(CEREBRO + ["plan", "-c", str(tmp_path / "loop.yaml")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "a recursive alias" in r.stderr and "Traceback" not in r.stderr, r.stderr[-500:]


def test_numbers_must_be_finite_and_ports_in_range():
    for item in ("train.lr=inf", "train.lr=.inf", "train.weight_decay=nan", "index.recall_target=.nan"):
        with pytest.raises(ConfigError, match=item.split("=")[0]):
            load_config(REPO / "configs/demo.yaml", [item])
    for item in ("serve.port=0", "serve.port=80000"):
        with pytest.raises(ConfigError, match="serve.port"):
            load_config(None, [item])
    for port in ("80000", "0", "-1"):  # refused by the option itself, before any config or model loads
        r = subprocess.run(CEREBRO + ["serve", "--port", port], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "Invalid value for '--port'" in r.stderr and "Traceback" not in r.stderr, r.stderr[-500:]
