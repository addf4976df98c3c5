"""gpuconv.torch: autograd through gpuconv's gradients, checked by gradcheck in float64 and against
torch.nn.functional's autograd in float32; the modules as drop-in replacements for torch.nn's in a small CNN."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from helpers import Case, assert_matches  # noqa: E402

import gpuconv.torch as gt  # noqa: E402
from gpuconv.problem import make_problem  # noqa: E402

#: Small cases for gradcheck (float64 finite differences): every option, alone and together.
GRADCHECK_CASES = [
    Case((2, 2, 5, 5), (3, 2, 3, 2)),
    Case((1, 4, 5, 5), (4, 2, 3, 3), stride=2, padding=1, groups=2),
    Case((1, 2, 7, 6), (3, 2, 2, 3), stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
    Case((1, 2, 5, 5), (4, 1, 3, 3), padding="same", groups=2),  # depthwise, channel multiplier 2
    Case((3, 5, 5), (2, 3, 3, 3), padding=1),                       # unbatched
    Case((2, 4, 11), (6, 2, 3), stride=2, padding=1, dilation=2, groups=2),
    Case((2, 11), (3, 2, 4), padding="same"),                      # unbatched conv1d, even kernel
]

#: float32 cases against torch's own convolution: larger reductions, so the tolerance's length scaling matters.
FLOAT32_CASES = [
    Case((2, 16, 12, 12), (24, 16, 3, 3), padding=1),
    Case((3, 8, 15, 15), (8, 2, 3, 3), stride=2, padding=1, groups=4),
    Case((2, 6, 11, 9), (12, 6, 5, 3), stride=(1, 2), dilation=(2, 1), padding=(4, 1)),
    Case((2, 8, 10, 10), (8, 1, 3, 3), groups=8, padding="same", bias=False),
    Case((4, 8, 50), (16, 8, 5), stride=2, padding=2),
    Case((2, 6, 31), (6, 3, 4), dilation=3, groups=2, padding="same"),
]


def _fn(case: Case) -> str:
    return "conv1d" if len(case.w) == 3 else "conv2d"  # the weight says it: x may be unbatched


def _ops(case: Case):
    return (gt.conv1d, F.conv1d) if _fn(case) == "conv1d" else (gt.conv2d, F.conv2d)


def _tensors(case: Case, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    draw = lambda shape: (torch.rand(shape, generator=g, dtype=dtype) * 2 - 1).requires_grad_()  # noqa: E731
    return draw(case.x), draw(case.w), (draw((case.w[0],)) if case.bias else None)


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck_float64(case: Case) -> None:
    ours, _ = _ops(case)
    x, w, b = _tensors(case, torch.float64, seed=1)
    inputs = (x, w) if b is None else (x, w, b)
    assert torch.autograd.gradcheck(lambda *a: ours(*a[:2], a[2] if len(a) > 2 else None, **case.kwargs), inputs)


def _problem(case: Case, direction: str):
    x = case.x if len(case.x) == len(case.w) else (1, *case.x)
    return make_problem(_fn(case), x, case.w, "float32", False, **case.kwargs, direction=direction)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("case", FLOAT32_CASES, ids=str)
def test_float32_forward_and_gradients_match_torch_autograd(case: Case) -> None:
    ours, theirs = _ops(case)
    seed = zlib.crc32(str(case).encode()) % 1000
    x, w, b = _tensors(case, torch.float32, seed)
    y = ours(x, w, b, **case.kwargs)
    y_ref = theirs(x, w, b, **case.kwargs)
    dy = torch.rand(y_ref.shape, generator=torch.Generator().manual_seed(seed + 1)) * 2 - 1
    params = [t for t in (x, w, b) if t is not None]
    got = torch.autograd.grad(y, params, dy)
    want = torch.autograd.grad(y_ref, params, dy)
    assert_matches(y.detach().numpy(), y_ref.detach().numpy(), _problem(case, "forward"))
    for name, g, r, direction in zip(("dx", "dw", "db"), got, want, ("input", "weight", "weight")):
        assert g.dtype == r.dtype and g.shape == r.shape, name
        assert g.is_contiguous(), name
        # db sums N*P*Q terms like dw: the weight problem's tolerance covers it
        assert_matches(g.numpy(), r.numpy(), _problem(case, direction))


def test_only_the_gradients_autograd_asks_for_are_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    fwd, input_grad, weight_grad = gt._OPS[2]

    def spy(name, f):
        def run(*args, **kwargs):
            calls.append(name)
            return f(*args, **kwargs)
        return run

    monkeypatch.setitem(gt._OPS, 2, (fwd, spy("input", input_grad), spy("weight", weight_grad)))
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    w = torch.rand(4, 3, 3, 3)
    b = torch.rand(4, requires_grad=True)
    gt.conv2d(x, w, b, padding=1).sum().backward()
    assert calls == ["input"]
    assert w.grad is None and x.grad is not None
    torch.testing.assert_close(b.grad, torch.full((4,), 2.0 * 8 * 8))
    calls.clear()
    x2 = x.detach()
    w.requires_grad_()
    gt.conv2d(x2, w, None, padding=1).sum().backward()
    assert calls == ["weight"]


def test_non_contiguous_inputs_and_output_gradient() -> None:
    g = torch.Generator().manual_seed(3)
    base_x = torch.rand(2, 9, 3, 10, generator=g, dtype=torch.float64)
    base_w = torch.rand(3, 3, 4, 3, generator=g, dtype=torch.float64)
    x = base_x.transpose(1, 2)[..., ::2].requires_grad_()    # (2, 3, 9, 5), strided in two axes
    w = base_w.permute(2, 1, 3, 0).requires_grad_()          # (4, 3, 3, 3), permuted
    assert not x.is_contiguous() and not w.is_contiguous()
    xc, wc = x.detach().contiguous().requires_grad_(), w.detach().contiguous().requires_grad_()
    y = gt.conv2d(x, w, stride=(2, 1), padding=1)
    y_ref = F.conv2d(xc, wc, stride=(2, 1), padding=1)
    torch.testing.assert_close(y, y_ref)
    dy = torch.rand(y.shape[1:], generator=g, dtype=torch.float64).expand_as(y)  # a stride-0 output gradient
    # autograd.grad returns what backward produced (.grad would be restrided to match the parameter)
    for ours, ref in zip(torch.autograd.grad(y, (x, w), dy), torch.autograd.grad(y_ref, (xc, wc), dy)):
        assert ours.dtype == torch.float64 and ours.device == ref.device and ours.is_contiguous()
        torch.testing.assert_close(ours, ref)


def test_float16_gradients_keep_the_dtype() -> None:
    x = torch.rand(1, 4, 6, 6, dtype=torch.float16, requires_grad=True)
    w = torch.rand(2, 4, 3, 3, dtype=torch.float16, requires_grad=True)
    y = gt.conv2d(x, w)
    y.sum().backward()
    assert y.dtype == x.grad.dtype == w.grad.dtype == torch.float16


def test_double_backward_is_refused() -> None:
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(gt.conv2d(x, w).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


def test_errors_name_the_function_and_the_argument() -> None:
    with pytest.raises(TypeError, match="conv2d: x, w and bias must share one dtype"):
        gt.conv2d(torch.rand(1, 3, 5, 5), torch.rand(2, 3, 3, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="conv2d: x has dtype float8_e4m3fn"):
        gt.conv2d(torch.rand(1, 3, 5, 5).to(torch.float8_e4m3fn), torch.rand(2, 3, 3, 3).to(torch.float8_e4m3fn))
    with pytest.raises(ValueError, match="conv1d: x has 4 channels but w expects 3"):
        gt.conv1d(torch.rand(1, 4, 9), torch.rand(2, 3, 3))


@pytest.mark.parametrize("module", ["Conv1d", "Conv2d"])
def test_modules_keep_torch_constructor_parameters_and_state_dict(module: str) -> None:
    kwargs = dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, dilation=1, groups=2,
                  bias=True, padding_mode="zeros")
    ours, ref = getattr(gt, module)(**kwargs), getattr(torch.nn, module)(**kwargs)
    assert isinstance(ours, getattr(torch.nn, module))
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    assert [p.shape for p in ours.parameters()] == [p.shape for p in ref.parameters()]
    assert list(getattr(gt, module)(4, 6, 3, bias=False).state_dict()) == ["weight"]


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("module", ["Conv1d", "Conv2d"])
def test_padding_modes_pad_as_torch_does(module: str, padding_mode: str) -> None:
    torch.manual_seed(5)
    ref = getattr(torch.nn, module)(3, 4, 3, padding=2, dilation=2, padding_mode=padding_mode).double()
    ours = getattr(gt, module)(3, 4, 3, padding=2, dilation=2, padding_mode=padding_mode).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.rand((2, 3, 9) if module == "Conv1d" else (2, 3, 7, 8), dtype=torch.float64, requires_grad=True)
    y, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y, y_ref)
    dy = torch.rand_like(y)
    got = torch.autograd.grad(y, (x, ours.weight, ours.bias), dy)
    want = torch.autograd.grad(y_ref, (x, ref.weight, ref.bias), dy)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r)


def _cnn(conv: type) -> torch.nn.Module:
    return torch.nn.Sequential(conv(3, 8, 3, padding=1), torch.nn.ReLU(), conv(8, 6, 3, stride=2, groups=2),
                               torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 5))


def test_module_swap_trains_like_torch_nn() -> None:
    torch.manual_seed(0)
    ref = _cnn(torch.nn.Conv2d).double()
    ours = _cnn(gt.Conv2d).double()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    assert isinstance(ours[0], gt.Conv2d) and isinstance(ours[2], gt.Conv2d)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (ref, ours)]
    g = torch.Generator().manual_seed(1)
    losses: list[tuple[float, float]] = []
    for _ in range(5):
        x = torch.randn(4, 3, 10, 10, generator=g, dtype=torch.float64)
        target = torch.randint(0, 5, (4,), generator=g)
        step = []
        for model, opt in zip((ref, ours), opts):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), target)
            loss.backward()
            opt.step()
            step.append(loss.item())
        losses.append((step[0], step[1]))
    ref_losses, our_losses = np.array(losses).T
    np.testing.assert_allclose(our_losses, ref_losses, rtol=0, atol=1e-10)
    assert ref_losses[-1] != ref_losses[0]  # the steps moved the weights
    for (name, p), q in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-10, msg=name)


@pytest.mark.gpu
def test_cuda_tensors_run_on_torch_current_stream() -> None:
    if not torch.cuda.is_available():
        pytest.skip("this PyTorch build sees no CUDA device")
    torch.manual_seed(0)
    x = torch.rand(4, 8, 16, 16, device="cuda", requires_grad=True)
    w = torch.rand(16, 8, 3, 3, device="cuda", requires_grad=True)
    b = torch.rand(16, device="cuda", requires_grad=True)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        y = gt.conv2d(x * 1.0, w, b, padding=1)  # x * 1.0 is produced on the side stream, read right after
        y.square().sum().backward()
    torch.cuda.synchronize()
    xr, wr, br = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y_ref = F.conv2d(xr, wr, br, padding=1)
    y_ref.square().sum().backward()
    assert y.device == x.device and x.grad.device == x.device
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-3)
    for g, r in ((x.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-2)
