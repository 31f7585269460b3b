"""DomainBed's model test, on CPU: every registered algorithm trains (its update moves the backbone),
predicts/adapts and resumes exactly.

Iterates ``ALGORITHMS.names()`` (built-ins, SparseShared and any plugin), so an algorithm that fails to
import shows up here as a failing test rather than being skipped.
"""

import io
import math

import pytest
import torch

from harness.datasets.tasks import TaskBatch
from harness.hparams import default_hparams
from harness.registry import ALGORITHMS

NUM_CLASSES = 3
INPUTS = {  # name -> (input_shape, backbone overrides)
    "vector": ((10,), {"backbone": "MLP", "feature_dim": 8, "mlp_width": 16, "mlp_depth": 2}),
    "image": ((1, 28, 28), {"backbone": "SmallCNN", "feature_dim": 8, "cnn_width": 4}),
}
SMALL = {"batch_size": 8, "tasks_per_batch": 2, "support": 9, "query": 6, "n_way": NUM_CLASSES}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: intra-op threads only contend (the suite shares 2 cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def hparams_for(name, input_kind):
    h = default_hparams(name, "SyntheticLinear")
    h.update(INPUTS[input_kind][1])
    h.update({k: v for k, v in SMALL.items() if k in h})
    return h


def make_batch(cls, input_shape, n_envs, seed):
    g = torch.Generator().manual_seed(seed)
    if cls.EPISODIC:
        T, S, Q = SMALL["tasks_per_batch"], SMALL["support"], SMALL["query"]
        ys = torch.arange(S).remainder(NUM_CLASSES).repeat(T, 1)  # every class in every support set
        return TaskBatch(torch.randn(T, S, *input_shape, generator=g), ys,
                         torch.randn(T, Q, *input_shape, generator=g),
                         torch.randint(0, NUM_CLASSES, (T, Q), generator=g), NUM_CLASSES)
    n = SMALL["batch_size"]
    return [(torch.randn(n, *input_shape, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g))
            for _ in range(n_envs)]


def build(name, input_kind, n_envs, seed=0):
    cls = ALGORITHMS.get(name)  # an import error fails the test
    torch.manual_seed(seed)
    return cls(INPUTS[input_kind][0], NUM_CLASSES, n_envs, hparams_for(name, input_kind))


def update(algorithm, batch, seed):
    torch.manual_seed(seed)  # the trainer seeds torch before every step
    logs = algorithm.update(batch)
    assert isinstance(logs, dict) and logs
    for k, v in logs.items():
        assert isinstance(v, float) and math.isfinite(v), f"{k}={v!r}"
    return logs


@pytest.mark.parametrize("input_kind", list(INPUTS))
@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_train_predict_resume(name, input_kind):
    n_envs = 3 if input_kind == "vector" else 2
    algorithm = build(name, input_kind, n_envs)
    shape = INPUTS[input_kind][0]
    cls = type(algorithm)
    before = [p.detach().clone() for p in algorithm.featurizer.parameters()]
    for step in range(3):
        update(algorithm, make_batch(cls, shape, n_envs, seed=step), seed=100 + step)
    moved = [not torch.equal(p0, p) for p0, p in zip(before, algorithm.featurizer.parameters())]
    assert any(moved), f"{name}'s update left its backbone unchanged (no optimizer step?)"

    x = torch.randn(5, *shape)
    algorithm.eval()
    if not cls.EPISODIC:
        with torch.no_grad():
            assert algorithm.predict(x).shape == (5, NUM_CLASSES)
    sx, sy = torch.randn(12, *shape), torch.arange(12) % NUM_CLASSES
    logits = algorithm.adapt(sx, sy, NUM_CLASSES)(x)
    assert logits.shape == (5, NUM_CLASSES) and torch.isfinite(logits).all()
    assert algorithm.features(x).shape == (5, INPUTS[input_kind][1]["feature_dim"])
    algorithm.train()

    buf = io.BytesIO()
    torch.save(algorithm.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed = build(name, input_kind, n_envs, seed=1)  # a different init: everything must come from the state
    resumed.load_state_dict(state)

    batch = make_batch(cls, shape, n_envs, seed=3)
    assert update(resumed, batch, seed=103) == update(algorithm, batch, seed=103)
    batch = make_batch(cls, shape, n_envs, seed=4)
    assert update(resumed, batch, seed=104) == update(algorithm, batch, seed=104)


def environment_based(name: str) -> bool:
    """Algorithms that take one minibatch per environment; one that fails to import counts as such
    (so its test fails instead of vanishing)."""
    try:
        return not ALGORITHMS.get(name).EPISODIC
    except Exception:
        return True


@pytest.mark.parametrize("name", [n for n in ALGORITHMS.names() if environment_based(n)])
def test_single_training_environment(name):
    algorithm = build(name, "vector", 1)
    for step in range(2):
        update(algorithm, make_batch(type(algorithm), (10,), 1, seed=step), seed=step)
    assert algorithm.predict(torch.randn(4, 10)).shape == (4, NUM_CLASSES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_runs_on_cuda(name):
    """Every algorithm trains and adapts on the GPU (tensors it creates must follow the input's device)."""
    algorithm = build(name, "image", 2).cuda()
    cls = type(algorithm)
    for step in range(2):
        batch = make_batch(cls, (1, 28, 28), 2, seed=step)
        batch = batch.to("cuda") if cls.EPISODIC else [(x.cuda(), y.cuda()) for x, y in batch]
        update(algorithm, batch, seed=step)
    x = torch.randn(5, 1, 28, 28, device="cuda")
    logits = algorithm.adapt(torch.randn(12, 1, 28, 28, device="cuda"), torch.arange(12, device="cuda") % NUM_CLASSES,
                             NUM_CLASSES)(x)
    assert logits.device.type == "cuda" and logits.shape == (5, NUM_CLASSES)
