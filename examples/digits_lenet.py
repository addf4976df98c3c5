"""Train a small LeNet-like CNN on scikit-learn's 8x8 digits in plain NumPy, with gpuconv's convolutions forward
(``gpuconv.conv2d``) and backward (``gpuconv.grad``), next to the same network in PyTorch.

Both networks start from the same weights (PyTorch's default initialization, copied), see the same mini-batches
in the same order and take the same SGD steps (momentum 0.9), in float32. Each epoch is run first by the NumPy
network, then by the PyTorch one, so each is timed with the other idle; PyTorch gets as many threads as the
BLAS NumPy uses. The data ship with scikit-learn (``load_digits``: 1,797 images, no download).

    pip install -e '.[examples]'          # scikit-learn; torch as in the README
    python examples/digits_lenet.py --epochs 10
    python examples/digits_lenet.py --threads 1     # both engines on one thread (threadpoolctl)

The network: conv 1->8 3x3 pad 1, ReLU, max-pool 2 (8x8 -> 4x4), conv 8->16 3x3 pad 1, ReLU, max-pool 2
(-> 2x2), flatten (64), linear 64->32, ReLU, linear 32->10, softmax cross-entropy.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

import numpy as np

import gpuconv
import gpuconv.grad

Params = dict[str, np.ndarray]


# ---- data ------------------------------------------------------------------------------------

def load(test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)``: images ``(N, 1, 8, 8)`` float32 in [0, 1], labels int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def batches(n: int, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's mini-batches: a fresh permutation of ``range(n)`` cut into ``batch``-sized pieces."""
    order = rng.permutation(n)
    return [order[i:i + batch] for i in range(0, n, batch)]


# ---- the NumPy network: layers with their backward -----------------------------------------

def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def maxpool2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2 max-pooling, stride 2: the output and the index (0-3) of each window's maximum (the first, as torch)."""
    n, c, h, w = x.shape
    windows = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    idx = windows.argmax(-1)
    return np.take_along_axis(windows, idx[..., None], -1)[..., 0], idx


def maxpool2_backward(dy: np.ndarray, idx: np.ndarray) -> np.ndarray:
    n, c, h2, w2 = dy.shape
    windows = np.zeros((n, c, h2, w2, 4), dy.dtype)
    np.put_along_axis(windows, idx[..., None], dy[..., None], -1)
    return windows.reshape(n, c, h2, w2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, 2 * h2, 2 * w2)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """The mean loss and its gradient with respect to the logits."""
    shifted = logits - logits.max(1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    n = len(labels)
    loss = -float(log_p[np.arange(n), labels].mean())
    grad = np.exp(log_p)
    grad[np.arange(n), labels] -= 1
    return loss, grad / n


def forward(p: Params, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The logits and what the backward pass needs."""
    a1 = gpuconv.conv2d(x, p["conv1.weight"], p["conv1.bias"], 1, 1)
    h1, i1 = maxpool2(relu(a1))
    a2 = gpuconv.conv2d(h1, p["conv2.weight"], p["conv2.bias"], 1, 1)
    h2, i2 = maxpool2(relu(a2))
    f = h2.reshape(len(x), -1)
    a3 = f @ p["fc1.weight"].T + p["fc1.bias"]
    h3 = relu(a3)
    logits = h3 @ p["fc2.weight"].T + p["fc2.bias"]
    return logits, dict(x=x, a1=a1, i1=i1, h1=h1, a2=a2, i2=i2, h2=h2, f=f, a3=a3, h3=h3)


def backward(p: Params, s: dict[str, Any], dlogits: np.ndarray) -> Params:
    """The gradient of every parameter, given the gradient of the logits."""
    g: Params = {}
    g["fc2.weight"], g["fc2.bias"] = dlogits.T @ s["h3"], dlogits.sum(0)
    da3 = (dlogits @ p["fc2.weight"]) * (s["a3"] > 0)
    g["fc1.weight"], g["fc1.bias"] = da3.T @ s["f"], da3.sum(0)
    dh2 = (da3 @ p["fc1.weight"]).reshape(s["h2"].shape)
    da2 = maxpool2_backward(dh2, s["i2"]) * (s["a2"] > 0)
    g["conv2.weight"] = gpuconv.grad.conv2d_weight(s["h1"], p["conv2.weight"].shape, da2, 1, 1)
    g["conv2.bias"] = da2.sum((0, 2, 3))
    dh1 = gpuconv.grad.conv2d_input(s["h1"].shape, p["conv2.weight"], da2, 1, 1)
    da1 = maxpool2_backward(dh1, s["i1"]) * (s["a1"] > 0)
    g["conv1.weight"] = gpuconv.grad.conv2d_weight(s["x"], p["conv1.weight"].shape, da1, 1, 1)
    g["conv1.bias"] = da1.sum((0, 2, 3))
    return g


class SGD:
    """``torch.optim.SGD`` with momentum (no dampening, no weight decay), in place on NumPy parameters."""

    def __init__(self, params: Params, lr: float, momentum: float = 0.9) -> None:
        self.params, self.lr, self.momentum = params, lr, momentum
        self.buffers: Params = {}

    def step(self, grads: Params) -> None:
        for name, g in grads.items():
            buf = self.buffers.get(name)
            buf = g.copy() if buf is None else self.momentum * buf + g
            self.buffers[name] = buf
            self.params[name] -= (self.lr * buf).astype(self.params[name].dtype)


def train_epoch(p: Params, opt: SGD, x: np.ndarray, y: np.ndarray, order: list[np.ndarray]) -> float:
    """One pass over ``order``'s mini-batches; returns the mean training loss."""
    losses = []
    for idx in order:
        logits, saved = forward(p, x[idx])
        loss, dlogits = softmax_cross_entropy(logits, y[idx])
        opt.step(backward(p, saved, dlogits.astype(np.float32)))
        losses.append(loss)
    return float(np.mean(losses))


def evaluate(p: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(loss, accuracy)`` on ``x, y``."""
    logits, _ = forward(p, x)
    loss, _ = softmax_cross_entropy(logits, y)
    return loss, float((logits.argmax(1) == y).mean())


# ---- the same network in PyTorch -----------------------------------------------------------

def torch_lenet() -> Any:
    import torch

    class LeNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
            self.fc1 = torch.nn.Linear(64, 32)
            self.fc2 = torch.nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = torch.nn.functional
            x = f.max_pool2d(f.relu(self.conv1(x)), 2)
            x = f.max_pool2d(f.relu(self.conv2(x)), 2)
            return self.fc2(f.relu(self.fc1(x.flatten(1))))

    return LeNet()


def torch_epoch(model: Any, opt: Any, x: Any, y: Any, order: list[np.ndarray]) -> float:
    import torch

    losses = []
    for idx in order:
        i = torch.from_numpy(idx)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def torch_evaluate(model: Any, x: Any, y: Any) -> tuple[float, float]:
    import torch

    with torch.no_grad():
        logits = model(x)
        return (torch.nn.functional.cross_entropy(logits, y).item(),
                (logits.argmax(1) == y).double().mean().item())


# ---- the comparison ------------------------------------------------------------------------

def blas_threads() -> int:
    """The threads NumPy's BLAS uses (threadpoolctl where installed, else the CPU count)."""
    try:
        from threadpoolctl import threadpool_info

        counts = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        if counts:
            return int(counts[0])
    except ImportError:
        pass
    return os.cpu_count() or 1


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for NumPy's BLAS and for PyTorch (needs threadpoolctl); default: BLAS's own")
    args = parser.parse_args()

    import torch

    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads, user_api="blas")
    threads = blas_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    model = torch_lenet()
    params = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}  # the same initial weights
    x_train, y_train, x_test, y_test = load(seed=args.seed)
    tx_train, ty_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
    tx_test, ty_test = torch.from_numpy(x_test), torch.from_numpy(y_test)
    opt = SGD(params, args.lr)
    topt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    rng = np.random.default_rng(args.seed)

    print(f"digits: {len(x_train)} training and {len(x_test)} test images of 8x8, batch {args.batch}, "
          f"SGD lr {args.lr} momentum 0.9, float32")
    print(f"machine: {machine()}; NumPy {np.__version__} (BLAS threads: {threads}), PyTorch {torch.__version__} "
          f"(threads: {torch.get_num_threads()}), gpuconv {gpuconv.__version__}")
    print(f"{'epoch':>5} | {'gpuconv+NumPy: loss':>19} {'test loss':>9} {'test acc':>8} {'s/epoch':>8} | "
          f"{'PyTorch: loss':>13} {'test loss':>9} {'test acc':>8} {'s/epoch':>8}")
    times: list[tuple[float, float]] = []
    for epoch in range(1, args.epochs + 1):
        order = batches(len(x_train), args.batch, rng)
        t = time.perf_counter()
        loss = train_epoch(params, opt, x_train, y_train, order)
        t_np = time.perf_counter() - t
        t = time.perf_counter()
        tloss = torch_epoch(model, topt, tx_train, ty_train, order)
        t_torch = time.perf_counter() - t
        times.append((t_np, t_torch))
        test_loss, acc = evaluate(params, x_test, y_test)
        ttest_loss, tacc = torch_evaluate(model, tx_test, ty_test)
        print(f"{epoch:>5} | {loss:>19.4f} {test_loss:>9.4f} {acc:>8.3f} {t_np:>8.3f} | "
              f"{tloss:>13.4f} {ttest_loss:>9.4f} {tacc:>8.3f} {t_torch:>8.3f}")
    mean, median = np.mean(times, 0), np.median(times, 0)
    print(f"s/epoch, mean: gpuconv+NumPy {mean[0]:.3f}, PyTorch {mean[1]:.3f}; median: gpuconv+NumPy "
          f"{median[0]:.3f}, PyTorch {median[1]:.3f} (gpuconv / PyTorch {median[0] / median[1]:.2f}x)")


if __name__ == "__main__":
    main()
