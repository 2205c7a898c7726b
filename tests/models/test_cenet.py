"""CENet: k-means vocabularies, the injection point, masks, batch independence, checkpoints, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mmer.training.mmsa import MmsaDataset, load_mmsa, make_synthetic_mmsa, mmsa_collate
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from mmer.checkpoint import WEIGHTS, load_checkpoint, save_checkpoint
from mmer.models.cenet import CENet, CENetDims, FrameVocabulary, kmeans, valid_frames
from mmer.registry import MODELS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIMS = (32, 5, 20)        # synthetic text / audio / vision widths (MOSI's audio and vision widths)
SIZES = (160, 40, 40)     # train / valid / test utterances
TOKEN_IDS = 500           # synthetic token ids stay below the tiny encoder's vocabulary
TINY_LAYERS = 2           # transformer layers of the conftest's tiny BERT
ATOL = 1e-5


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    path = tmp_path_factory.mktemp("mmsa") / "tiny.pkl"
    make_synthetic_mmsa(path, sizes=SIZES, dims=DIMS, vocab_size=TOKEN_IDS, seed=0)
    return load_mmsa(path)


def _model(encoder_dir, seed: int = 0, **kw) -> CENet:
    torch.manual_seed(seed)
    return CENet(CENetDims(text_encoder=str(encoder_dir), audio_dim=DIMS[1], vision_dim=DIMS[2], **kw))


@pytest.fixture(scope="module")
def prepared(tiny_text_encoder_dir, splits) -> CENet:
    model = _model(tiny_text_encoder_dir)
    model.prepare(splits["train"].arrays())
    return model.eval()


def _batch(split, rows) -> dict[str, torch.Tensor]:
    return {"text": torch.from_numpy(split.text_ids[rows]), "text_mask": torch.from_numpy(split.text_mask[rows]),
            "audio": torch.from_numpy(split.audio[rows]), "audio_lengths": torch.from_numpy(split.audio_lengths[rows]),
            "vision": torch.from_numpy(split.vision[rows]),
            "vision_lengths": torch.from_numpy(split.vision_lengths[rows])}


# -- construction ---------------------------------------------------------------------------------
def test_registered_and_refuses_text_features(tiny_text_encoder_dir):
    assert MODELS.get("cenet") is CENet
    assert CENetDims().text_encoder == "minilm" and CENetDims().inject_layer == 1
    with pytest.raises(ValueError, match="language model"):
        CENet(CENetDims(text_encoder="features"))
    with pytest.raises(ValueError, match="inject_layer"):
        _model(tiny_text_encoder_dir, inject_layer=TINY_LAYERS + 1)


def test_forward_before_prepare_names_prepare(tiny_text_encoder_dir, splits):
    model = _model(tiny_text_encoder_dir).eval()
    with pytest.raises(RuntimeError, match=r"prepare\("):
        model(**_batch(splits["test"], slice(0, 2)))


def test_shapes_and_loss(prepared, splits):
    batch = _batch(splits["test"], slice(0, 5))
    with torch.no_grad():
        out = prepared(**batch)
    steps, width = batch["text"].shape[1], prepared.text.width
    assert out.prediction.shape == (5, 1)
    assert out.features["fused"].shape == (5, width)
    for name in ("text", "audio", "vision", "shift"):
        assert out.features[name].shape == (5, steps, width)
    assert out.aux == {} and out.losses == {}
    loss, parts = prepared.loss(out, torch.from_numpy(splits["test"].labels[:5]))
    assert loss.ndim == 0 and torch.isfinite(loss) and set(parts) == {"task"}


def test_mse_loss_option(tiny_text_encoder_dir, prepared, splits):
    model = _model(tiny_text_encoder_dir, regression_loss="mse")
    prediction, labels = torch.tensor([[0.5], [-1.0]]), torch.tensor([1.5, 1.0])
    assert torch.isclose(model.task_loss(prediction, labels), F.mse_loss(prediction.view(-1), labels))
    assert torch.isclose(prepared.task_loss(prediction, labels), F.l1_loss(prediction.view(-1), labels))
    with pytest.raises(ValueError, match="regression_loss"):
        _model(tiny_text_encoder_dir, regression_loss="huber")


# -- masks and batches ----------------------------------------------------------------------------
def test_padding_does_not_change_predictions(prepared, splits):
    batch = _batch(splits["test"], slice(0, 6))
    with torch.no_grad():
        ref = prepared(**batch).prediction
    g = torch.Generator().manual_seed(3)
    extra = 7
    padded = dict(batch)
    padded["text"] = torch.cat([batch["text"], torch.randint(100, TOKEN_IDS, (6, extra), generator=g)], 1)
    padded["text_mask"] = torch.cat([batch["text_mask"], torch.zeros(6, extra, dtype=torch.bool)], 1)
    # Garbage past every clip's end: MOSEI-like -inf in audio, large noise in vision.
    audio = torch.cat([batch["audio"], torch.zeros(6, extra, DIMS[1])], 1)
    audio[torch.arange(audio.shape[1]) >= batch["audio_lengths"][:, None]] = float("-inf")
    vision = torch.cat([batch["vision"], torch.zeros(6, extra, DIMS[2])], 1)
    noise = 100 * torch.randn(vision.shape, generator=g)
    past_end = torch.arange(vision.shape[1]) >= batch["vision_lengths"][:, None]
    padded["audio"], padded["vision"] = audio, torch.where(past_end[..., None], noise, vision)
    with torch.no_grad():
        out = prepared(**padded).prediction
    assert torch.allclose(out, ref, atol=ATOL)


def test_eval_predictions_are_batch_independent(prepared, splits):
    batch = _batch(splits["test"], slice(0, 6))
    with torch.no_grad():
        together = prepared(**batch).prediction
        alone = torch.cat([prepared(**{k: v[i:i + 1] for k, v in batch.items()}).prediction for i in range(6)])
    assert torch.allclose(together, alone, atol=ATOL)


# -- the vocabularies (C1) ------------------------------------------------------------------------
def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [0.0, 10.0], [10.0, 0.0], [10.0, 10.0]], dtype=torch.float64)
    frames = centres.repeat_interleave(50, 0) + 0.1 * torch.randn(200, 2, generator=g, dtype=torch.float64)
    found = kmeans(frames, 4, seed=0)
    order = torch.argsort(found[:, 0].round() * 100 + found[:, 1].round())   # the centres' order
    assert torch.allclose(found[order], centres, atol=0.1)


def test_vocabulary_is_deterministic_per_seed(tiny_text_encoder_dir, splits):
    train = splits["train"].arrays()
    fits = []
    for seed in (0, 0, 1):
        model = _model(tiny_text_encoder_dir, kmeans_seed=seed)
        model.prepare(train)
        fits.append({k: v for k, v in model.state_dict().items() if "vocab." in k})
    assert all(torch.equal(fits[0][k], fits[1][k]) for k in fits[0])
    assert not all(torch.equal(fits[0][k], fits[2][k]) for k in fits[0])


def test_vocabulary_uses_only_valid_frames():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(30, 12, 3, generator=g)
    lengths = torch.randint(0, 13, (30,), generator=g)
    lengths[0] = 0                        # an empty clip contributes nothing
    past_end = torch.arange(12) >= lengths[:, None]
    features[past_end] = 1e4              # padding far away from every valid frame
    frames = valid_frames(features.numpy(), lengths.numpy())
    assert len(frames) == int(lengths.sum()) and frames.max() < 100
    vocab = FrameVocabulary(3, 8)
    vocab.fit(frames, seed=0, max_iters=100, max_frames=0)
    assert torch.allclose(vocab.mean, torch.from_numpy(frames).double().mean(0).float(), atol=1e-6)
    raw_centroids = vocab.centroids * vocab.scale + vocab.mean
    assert raw_centroids.abs().max() < 10


def test_frame_ids_are_the_nearest_centroid(prepared, splits):
    batch = _batch(splits["test"], slice(0, 4))
    ids = prepared.frame_ids(batch["audio"], batch["audio_lengths"], batch["vision"], batch["vision_lengths"])
    for name, vocab in (("audio", prepared.audio_vocab), ("vision", prepared.vision_vocab)):
        x, lengths = batch[name].double(), batch[f"{name}_lengths"]
        z = (x - vocab.mean.double()) / vocab.scale.double()
        brute = ((z[:, :, None, :] - vocab.centroids.double()) ** 2).sum(-1).argmin(-1)   # (B, L)
        valid = torch.arange(x.shape[1]) < lengths.clamp(min=1)[:, None]
        assert torch.equal(ids[f"{name}_ids"][valid], brute[valid])
        assert torch.equal(vocab(batch[name].float()), brute)
        assert (ids[f"{name}_ids"][~valid] == vocab.size).all()     # the padding word
        assert ids[f"{name}_ids"][valid].max() < vocab.size


def test_checkpoint_keeps_the_vocabularies(prepared, splits, tmp_path):
    batch = _batch(splits["test"], slice(0, 5))
    folder = save_checkpoint(prepared, tmp_path / "cenet")
    stored = load_file(str(folder / WEIGHTS))
    assert torch.equal(stored["audio_vocab.centroids"], prepared.audio_vocab.centroids)
    assert torch.equal(stored["vision_vocab.centroids"], prepared.vision_vocab.centroids)
    loaded = load_checkpoint(folder)
    assert isinstance(loaded, CENet) and loaded.audio_vocab.ready and loaded.vision_vocab.ready
    for key, value in prepared.state_dict().items():
        if "vocab." in key:
            assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).prediction, prepared(**batch).prediction, atol=1e-6)


# -- the injection (C6) ---------------------------------------------------------------------------
@pytest.mark.parametrize("layer", range(TINY_LAYERS + 1))
def test_injection_changes_states_only_from_the_chosen_layer(tiny_text_encoder_dir, splits, layer):
    model = _model(tiny_text_encoder_dir, inject_layer=layer)
    model.prepare(splits["train"].arrays())
    model.eval()
    batch = _batch(splits["test"], slice(0, 3))
    with torch.no_grad():
        states, ce = model.hidden_states(**batch)
        plain = model.text.encoder(input_ids=batch["text"], attention_mask=batch["text_mask"].long(),
                                   output_hidden_states=True).hidden_states
    assert len(states) == len(plain) == TINY_LAYERS + 1
    valid = batch["text_mask"]
    for i, (ours, theirs) in enumerate(zip(states, plain)):
        gap = (ours - theirs)[valid].abs().max()
        if i < layer:
            assert gap < 1e-6, f"state {i} changed before the injection layer {layer}"
        else:
            assert gap > 1e-5, f"state {i} unchanged after the injection layer {layer}"
    assert torch.allclose(states[layer] - plain[layer], ce["shift"], atol=1e-6)


# -- learning -------------------------------------------------------------------------------------
def test_training_lowers_loss_and_beats_the_mean(tiny_text_encoder_dir, splits):
    model = _model(tiny_text_encoder_dir)
    model.prepare(splits["train"].arrays())
    loader = DataLoader(MmsaDataset(splits["train"]), batch_size=32, shuffle=True, collate_fn=mmsa_collate("ids"),
                        generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    inputs = ("text", "text_mask", "audio", "audio_lengths", "vision", "vision_lengths")
    epoch_losses = []
    for _ in range(12):
        model.train()
        total = 0.0
        for batch in loader:
            loss, _ = model.loss(model(**{k: batch[k] for k in inputs}), batch["labels"], batch["index"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch["labels"])
        epoch_losses.append(total / len(splits["train"]))
    assert epoch_losses[-1] < 0.8 * epoch_losses[0]
    test = splits["test"]
    model.eval()
    with torch.no_grad():
        prediction = model(**_batch(test, slice(None))).prediction.view(-1)
    labels = torch.from_numpy(test.labels)
    mean_mae = (labels - float(splits["train"].labels.mean())).abs().mean()
    assert (prediction - labels).abs().mean() < mean_mae
