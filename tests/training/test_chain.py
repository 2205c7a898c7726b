"""The whole TelME chain on a tiny MELD-layout corpus, through the real command-line entry points:

teacher (tiny random BERT) -> audio student (edge) and visual student (edge), distilled from
it -> ASF fusion on their cached features -> mmer-eval. Every stage must write its run folder
(config.yaml, metrics.json, report.txt, confusion_matrix.png, a checkpoint mmer.load reads)
and its training loss must fall.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import mmer
from mmer.training.cli import eval_main, train_main
from tests.training.fixtures import make_tiny_meld

TINY_HIDDEN, TINY_LAYERS, TINY_HEADS, TINY_FFN = 32, 2, 2, 64   # tiny BERT, as in tests/conftest.py
TINY_MAX_POSITIONS = 128
KD_DIM = 32                 # teacher feature width = students' feature width
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
RUN_FILES = ("config.yaml", "metrics.json", "report.txt", "confusion_matrix.png", "checkpoint/mmer.json",
             "checkpoint/model.safetensors")
COMMON = ["optim.progress=false", "optim.batch_size=4", "optim.eval_batch_size=8", "optim.warmup_ratio=0.0",
          "optim.num_workers=0", "data.face_crop=false"]
# Small edge students: a couple of narrow blocks and 32 px faces keep each epoch to seconds.
AUDIO_SIZES = "{stem_channels: 8, block_channels: [8, 16], block_strides: [1, 2], attention_dim: 8, n_mels: 32}"
VISUAL_SIZES = "{image_size: 32, num_frames: 4, edge_stem_channels: 4, edge_block_channels: [8, 8]}"


def tiny_bert(folder: Path, texts: list[str]) -> Path:
    """A random-weight BERT folder whose WordPiece vocabulary covers ``texts`` (offline, no weights)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True)
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    chars = sorted({c for t in texts for c in t.lower() if not c.isspace()})
    vocab = list(dict.fromkeys(BERT_SPECIALS + chars + [f"##{c}" for c in chars] + words))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS,
                        num_attention_heads=TINY_HEADS, intermediate_size=TINY_FFN,
                        max_position_embeddings=TINY_MAX_POSITIONS)
    BertModel(config).save_pretrained(str(folder))
    return folder


def check_run(run: Path, model_type: str) -> dict:
    """Every artefact is there, the checkpoint loads, the training loss fell; returns metrics.json."""
    for name in RUN_FILES:
        assert (run / name).is_file(), f"{run / name} missing"
    metrics = json.loads((run / "metrics.json").read_text())
    losses = [e["train_loss"] for e in metrics["epochs"]]
    assert losses[-1] < losses[0], f"{run.name}: training loss did not fall: {losses}"
    assert metrics["test"]["n"] > 0 and 0.0 <= metrics["test"]["weighted_f1"] <= 1.0
    assert "weighted avg" in (run / "report.txt").read_text()
    model = mmer.load(run / "checkpoint")
    assert model.registry_name == model_type
    prov = model.checkpoint_meta["provenance"]
    assert prov["best_epoch"] == metrics["best_epoch"] and prov["dataset"] == "meld"
    return metrics


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Run the four stages once; the tests below inspect what they left."""
    tmp = tmp_path_factory.mktemp("chain")
    tiny = make_tiny_meld(tmp / "meld", n_dialogues=3, utts_per_dialogue=3)
    encoder = tiny_bert(tmp / "tiny_bert", list(tiny.texts.values()) + ["Now feels"])
    # probe results shared between stages, clips decoded once per stage: ffmpeg calls dominate
    data = [f"data.root={tiny.root}", f"cache_dir={tmp / 'cache'}", f"data.probe_cache_dir={tmp / 'probe'}",
            "data.keep_decoded=true"]
    runs = {name: tmp / name for name in ("teacher", "audio", "visual", "fusion")}
    teacher_ckpt = runs["teacher"] / "checkpoint"
    assert train_main(["teacher", "--config", "mmer_meld_teacher", "--out", str(runs["teacher"]),
                       f"data.root={tiny.root}", f"model.encoder={encoder}", f"model.kd_dim={KD_DIM}",
                       "model.max_tokens=64", "optim.epochs=3", "optim.lr=2e-3", *COMMON]) == 0
    assert train_main(["student", "--config", "mmer_meld_student_audio", "--out", str(runs["audio"]), *data,
                       f"teacher={teacher_ckpt}", f"model.overrides={AUDIO_SIZES}", "data.max_audio_s=4.0",
                       "optim.epochs=3", "optim.lr=3e-3", *COMMON]) == 0
    assert train_main(["student", "--config", "mmer_meld_student_visual", "--out", str(runs["visual"]), *data,
                       f"teacher={teacher_ckpt}", f"model.overrides={VISUAL_SIZES}", "optim.epochs=3",
                       "optim.lr=3e-3", *COMMON]) == 0
    assert train_main(["fusion", "--config", "mmer_meld_fusion", "--out", str(runs["fusion"]), *data,
                       f"teacher={teacher_ckpt}", f"audio_student={runs['audio'] / 'checkpoint'}",
                       f"visual_student={runs['visual'] / 'checkpoint'}", "model.num_heads=2",
                       "optim.epochs=3", "optim.lr=3e-3", *COMMON]) == 0
    return tiny, runs, tmp


def test_teacher_stage(chain):
    tiny, runs, _ = chain
    metrics = check_run(runs["teacher"], "teacher")
    assert metrics["test"]["n"] == tiny.rows["test"]   # text-only: every test row is scored


def test_student_stages_distil_from_the_cached_teacher(chain):
    tiny, runs, tmp = chain
    for name, model_type in (("audio", "audio_student"), ("visual", "visual_student")):
        check_run(runs[name], model_type)
        cfg = (runs[name] / "config.yaml").read_text()
        assert "alpha: 1.0" in cfg and "beta: 1.0" in cfg
    audio = json.loads((runs["audio"] / "metrics.json").read_text())
    # train's corrupt clip is skipped (logged), never a crash; the test split keeps all rows
    assert audio["test"]["n"] == tiny.rows["test"]
    prov = mmer.load(runs["audio"] / "checkpoint").checkpoint_meta["provenance"]
    assert prov["split_sizes"]["train"] == tiny.rows["train"] - len(tiny.corrupt)
    assert prov["teacher"] == str((runs["teacher"] / "checkpoint").resolve())
    assert any((tmp / "cache").rglob("shard-*.safetensors"))   # the teacher ran once, into the cache


def test_fusion_stage_and_eval(chain, tmp_path):
    tiny, runs, _ = chain
    metrics = check_run(runs["fusion"], "asf")
    out = tmp_path / "eval.json"
    assert eval_main([str(runs["fusion"] / "checkpoint"), "--data", "meld", "--split", "test", "--data-root",
                      str(tiny.root), "--json", str(out), "--batch-size", "4"]) == 0
    scored = json.loads(out.read_text())
    assert {"weighted_f1", "accuracy", "macro_f1", "per_class", "n"} <= set(scored)
    assert scored["n"] == tiny.rows["test"]
    # mmer-eval reloads the same frozen models: it must reproduce the trainer's test score
    assert scored["weighted_f1"] == pytest.approx(metrics["test"]["weighted_f1"])


def test_eval_refuses_what_it_cannot_feed(chain, tmp_path, capsys):
    tiny, runs, _ = chain
    code = eval_main([str(runs["visual"] / "checkpoint"), "--data", "emodb", "--data-root", str(tiny.root)])
    assert code == 2
    assert "EmoDB has only audio" in capsys.readouterr().err


def test_greedy_soup_of_two_teachers_from_one_init(chain, tmp_path, capsys):
    """A second teacher from the same random weights (model.init_seed) but another data order joins the
    first in a weight average chosen on dev; a teacher from other initial weights is refused."""
    from mmer.training import soup

    tiny, runs, tmp = chain
    second = tmp_path / "teacher_s7"
    assert train_main(["teacher", "--config", "mmer_meld_teacher", "--out", str(second), f"data.root={tiny.root}",
                       f"model.encoder={tmp / 'tiny_bert'}", f"model.kd_dim={KD_DIM}", "model.max_tokens=64",
                       "optim.epochs=3", "optim.lr=2e-3", "optim.seed=7", "model.init_seed=42", *COMMON]) == 0
    first_ckpt, second_ckpt = runs["teacher"] / "checkpoint", second / "checkpoint"
    assert soup.init_seed(mmer.load(second_ckpt).checkpoint_meta) == 42
    out = tmp_path / "soup" / "checkpoint"
    assert soup.main([str(first_ckpt), str(second_ckpt), "--data-root", str(tiny.root), "--out", str(out)]) == 0
    record = json.loads((out.parent / "soup.json").read_text())
    assert len(record["candidates"]) == 2 and 1 <= len(record["ingredients"]) <= 2
    score = soup.SCORE   # as shipped: after the model's own neutral prior
    assert record["dev"][score] >= max(c["dev"][score] for c in record["candidates"])
    assert all(c["dev"][score] >= c["dev"]["weighted_f1"] for c in record["candidates"])   # offset 0 is swept
    souped = mmer.load(out)
    assert souped.checkpoint_meta["provenance"]["soup"]["ingredients"] == record["ingredients"]
    assert "calibration" not in souped.checkpoint_meta   # fitted again by mmer.training.neutral_prior
    assert "test_metrics" not in souped.checkpoint_meta["provenance"]   # an ingredient's, not the soup's
    states = [mmer.load(c).state_dict() for c in record["ingredients"]]
    key = "classifier.weight"
    expected = sum(s[key].float() for s in states) / len(states)
    assert torch_allclose(souped.state_dict()[key], expected)
    assert souped(["Hi.", "You're late again!"])[0]["label"] in souped.checkpoint_meta["id2label"].values()

    other = tmp_path / "other_init"
    shutil.copytree(second_ckpt, other)
    meta = json.loads((other / "mmer.json").read_text())
    meta["provenance"]["config"]["model"]["init_seed"] = 3
    (other / "mmer.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert soup.main([str(first_ckpt), str(other), "--data-root", str(tiny.root), "--out", str(tmp_path / "x")]) == 2
    assert re.search(r"init seed .* 3 differs", capsys.readouterr().err)


def torch_allclose(a, b) -> bool:
    import torch

    return bool(torch.allclose(a.float(), b.float(), atol=1e-6))


def test_teacher_distils_an_ensemble_of_teachers(chain, tmp_path, capsys):
    """ensemble=[...] adds a soft-target KL on the training split (the members' outputs cached once);
    without loss.alpha the recipe is refused by name."""
    tiny, runs, tmp = chain
    member = runs["teacher"] / "checkpoint"
    base = ["teacher", "--config", "mmer_meld_teacher", f"data.root={tiny.root}", f"model.encoder={tmp / 'tiny_bert'}",
            f"model.kd_dim={KD_DIM}", "model.max_tokens=64", "optim.epochs=2", "optim.lr=2e-3",
            f"ensemble=[{member}, {member}]", f"cache_dir={tmp_path / 'cache'}", *COMMON]
    out = tmp_path / "distilled"
    assert train_main([*base, "--out", str(out), "loss.alpha=1.0", "loss.tau=2.0"]) == 0
    metrics = check_run(out, "teacher")
    assert all(e["train_parts"]["kd"] >= 0.0 for e in metrics["epochs"])
    ensemble = mmer.load(out / "checkpoint").checkpoint_meta["provenance"]["ensemble"]
    assert ensemble == {"members": [str(member.resolve())] * 2, "alpha": 1.0, "tau": 2.0, "targets": "train split"}
    assert any((tmp_path / "cache").rglob("*")), "the members' outputs are cached"

    capsys.readouterr()
    assert train_main([*base, "--out", str(tmp_path / "refused"), "loss.alpha=0.0"]) == 2
    assert "set loss.alpha > 0" in capsys.readouterr().err


def test_neutral_prior_shifts_the_neutral_bias_by_the_dev_offset(chain, tmp_path):
    """The offset is the best of the sweep on dev, goes into classifier.bias[neutral] alone, and the
    calibration is refitted; the checkpoint records the command and both dev scores."""
    from mmer.training import neutral_prior

    tiny, runs, _ = chain
    source, out = runs["teacher"] / "checkpoint", tmp_path / "prior" / "checkpoint"
    assert neutral_prior.main(["--model", str(source), "--data-root", str(tiny.root), "--out", str(out)]) == 0
    before, after = mmer.load(source), mmer.load(out)
    prior = after.checkpoint_meta["provenance"]["neutral_prior"]
    sweep = json.loads((out.parent / "neutral_prior_sweep.json").read_text())
    assert prior["dev_after"]["weighted_f1"] == max(r["weighted_f1"] for r in sweep) >= prior["dev_before"]["weighted_f1"]
    assert prior["command"] == "python -m mmer.training.neutral_prior"
    shift = (after.state_dict()["classifier.bias"] - before.state_dict()["classifier.bias"]).tolist()
    neutral = list(after.checkpoint_meta["id2label"].values()).index("neutral")
    assert shift[neutral] == pytest.approx(prior["offset"], abs=1e-2)
    assert all(abs(d) < 1e-6 for i, d in enumerate(shift) if i != neutral)
    assert after.checkpoint_meta["calibration"]["temperature"] > 0


def test_packaging_a_teacher_as_default_text_stores_float16_and_its_facts(chain, tmp_path, capsys):
    """scripts/package_default_text.py: float16 weights that predict as the float32 ones, the shipped
    facts and the given command in the provenance; a teacher on another encoder, or one whose prior
    is fitted, is refused. The MiniLM teacher here is default-text with its prior taken out of the record."""
    import runpy

    import torch

    from mmer.checkpoint import save_checkpoint
    from mmer.training import neutral_prior

    tiny, runs, _ = chain
    script = Path(__file__).resolve().parents[2] / "scripts" / "package_default_text.py"
    main = runpy.run_path(str(script))["main"]
    shipped = mmer.load("default-text")
    trained = tmp_path / "trained" / "checkpoint"
    record = {k: v for k, v in shipped.checkpoint_meta["provenance"].items() if k != "neutral_prior"}
    save_checkpoint(shipped, trained, provenance=record)   # float32, as mmer-train writes it
    out = tmp_path / "fp16" / "checkpoint"
    assert main([str(trained), "--out", str(out), "--command", "mmer-train teacher ...", "--machine", "here"]) == 0
    packaged = mmer.load(out)
    prov = packaged.checkpoint_meta["provenance"]
    assert packaged.checkpoint_meta["weights_dtype"] == "float16" and "calibration" not in packaged.checkpoint_meta
    assert prov["command"] == "mmer-train teacher ..." and prov["machine"] == "here" and "GPL-3.0" in prov["data_license"]
    turns = ["Hi.", "You're late again!"]
    with torch.no_grad():
        for half, full in zip(packaged(turns), shipped(turns)):
            assert half["scores"] == pytest.approx(full["scores"], abs=1e-2)

    calibrated = tmp_path / "prior" / "checkpoint"
    assert neutral_prior.main(["--model", str(out), "--data-root", str(tiny.root), "--out", str(calibrated)]) == 0
    assert mmer.load(calibrated).checkpoint_meta["weights_dtype"] == "float16"
    capsys.readouterr()
    assert main([str(calibrated), "--out", str(tmp_path / "again"), "--command", "x", "--machine", "y"]) == 2
    assert "neutral prior is already fitted" in capsys.readouterr().err
    assert main([str(runs["teacher"] / "checkpoint"), "--out", str(tmp_path / "tiny"), "--command", "x",
                 "--machine", "y"]) == 2
    assert "on the packaged 'minilm'" in capsys.readouterr().err
