"""Every task runs end to end on local data (no network), and the metrics and schedules compute what they say."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from normrnn.train import LossRecorder, TrainConfig, train
from normrnn.train.metrics import ClassificationMetrics, macro_f1
from normrnn.train.trainer import lr_factor


@pytest.fixture
def tsv_file(tmp_path):
    rng = random.Random(0)
    words = {"pos": ["good", "great", "lovely", "fine"], "neg": ["bad", "awful", "poor", "sad"]}
    lines = [f"{lab}\t{' '.join(rng.choice(words[lab] + ['the', 'a', 'film']) for _ in range(rng.randint(2, 9)))}"
             for lab in ("pos", "neg") for _ in range(150)]
    path = tmp_path / "reviews.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def image_csv(tmp_path):
    # mnist_5k-style CSV (784 pixels + label): class c lights up a band of rows, so it is learnable fast.
    rng = np.random.default_rng(0)
    rows = []
    for i in range(300):
        label = i % 3
        img = rng.integers(0, 60, (28, 28))
        img[8 * label:8 * label + 6] += 180
        rows.append(np.concatenate([img.ravel(), [label]]))
    path = tmp_path / "mnist_5k.csv"
    np.savetxt(path, np.array(rows), fmt="%d", delimiter=",")
    return path


def test_text_classification_from_tsv(tsv_file):
    s = train(TrainConfig(task="classify", data=str(tsv_file), hidden=16, batch_size=16, max_steps=60, lr=1e-2,
                          progress=False, pool="mean", bidirectional=True))
    assert {"valid_accuracy", "valid_macro_f1", "test_accuracy", "test_macro_f1"} <= s.keys()
    assert s["valid_accuracy"] > 0.8, s["valid"]


@pytest.mark.parametrize("mode", ["row", "cnn"])
def test_image_classification(image_csv, mode):
    s = train(TrainConfig(task="image", data=str(image_csv), image_mode=mode, hidden=16, batch_size=16,
                          max_steps=40, lr=1e-2, norm="batch", progress=False))
    assert s["metric"] == "accuracy" and s["data"]["classes"] == 3
    assert s["valid_accuracy"] > 0.7, s["valid"]


def test_copy_task_runs_and_reports():
    rec = LossRecorder()
    s = train(TrainConfig(task="copy", seq_len=5, hidden=32, batch_size=32, max_steps=30, limit=1000, lr=1e-2,
                          progress=False, cell="gru"), hooks=[rec])
    assert 0.0 <= s["valid_accuracy"] <= 1.0 and math.isfinite(s["valid_loss"])
    assert rec.losses[-1] < rec.losses[0]


def test_hook_events_and_divergence_is_reported():
    events = []
    s = train(TrainConfig(task="adding", seq_len=8, hidden=8, max_steps=3, limit=200, progress=False),
              hooks=[lambda e, r: events.append(e)])
    assert events[:3] == ["step"] * 3 and events[-1] == "end" and "eval" in events and not s["diverged"]
    s = train(TrainConfig(task="adding", seq_len=8, hidden=8, max_steps=5, limit=200, progress=False, lr=1e30,
                          optimizer="sgd", clip=0.0, norm="none", cell="rnn"))
    assert s["diverged"] and s["steps"] < 5


def test_macro_f1_and_accuracy():
    conf = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # class 2 never occurs: left out of the mean
    f1 = [2 * 3 / (3 + 4), 2 * 2 / (3 + 2)]
    assert macro_f1(conf) == pytest.approx(sum(f1) / 2)
    m = ClassificationMetrics(3)
    m.add(6.0, torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), torch.tensor([0, 1, 1]))
    r = m.result()
    assert r["accuracy"] == pytest.approx(2 / 3) and r["loss"] == pytest.approx(2.0)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "rmsprop", "sgd"])
def test_optimizers_and_schedules(optimizer):
    rec = LossRecorder()
    train(TrainConfig(task="adding", seq_len=6, hidden=8, max_steps=6, limit=200, progress=False, lr=0.1,
                      optimizer=optimizer, schedule="step", step_size=2, step_gamma=0.5), hooks=[rec])
    assert rec.lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    cos = lr_factor(TrainConfig(schedule="cosine", warmup=2), total_steps=10)
    assert [cos(0), cos(1), cos(2), cos(10)] == pytest.approx([0.5, 1.0, 1.0, 0.0])


def test_limited_text_split_embeds_only_the_words_it_trains_on(tmp_path):
    """With ``limit``, the classifier's vocabulary is the kept training examples' words (plus <pad>, <unk>):
    every other word reads as <unk> in every split, and the kept words stay distinct."""
    from normrnn.train.tasks import ClassificationTask, Reindexed

    lines = [f"{'ab'[i % 2]}\tcommon k{i % 50} {'good' if i % 2 else 'bad'}" for i in range(200)]  # 50 rare words
    path = tmp_path / "unique.tsv"
    path.write_text("\n".join(lines) + "\n")
    full = ClassificationTask(TrainConfig(task="classify", data=str(path), hidden=8, progress=False))
    task = ClassificationTask(TrainConfig(task="classify", data=str(path), hidden=8, limit=20, progress=False))
    train_split = task.splits["train"]
    assert isinstance(train_split, Reindexed)
    old, _, _ = train_split.dataset.get_batch(torch.arange(20))
    new, _, _ = train_split.get_batch(torch.arange(20))
    used = torch.unique(old[old > 1])
    assert task.vocab_size == len(used) + 2 < full.vocab_size
    assert task.info["vocab"] == task.vocab_size
    # kept words map one to one (same positions, distinct ids), padding stays 0
    assert torch.equal(new == 0, old == 0)
    pairs = {(int(a), int(b)) for a, b in zip(old.flatten(), new.flatten())}
    assert len({a for a, _ in pairs}) == len({b for _, b in pairs}) == len(pairs)
    assert int(new.max()) == task.vocab_size - 1
    # valid words of the full training split that the kept 20 lack read as <unk>; the others keep their ids
    vold, _, _ = task.splits["valid"].dataset.get_batch(torch.arange(len(task.splits["valid"])))
    vnew, _, _ = task.splits["valid"].get_batch(torch.arange(len(task.splits["valid"])))
    unseen = (vold > 1) & ~torch.isin(vold, used)
    assert unseen.any() and (vnew[unseen] == 1).all()
    assert (vnew[~unseen & (vold > 1)] > 1).all()
