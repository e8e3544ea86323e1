"""TorchScript: a scripted module calling the op can be saved and run in a fresh process."""

import subprocess
import sys
import textwrap
from typing import List, Optional

import torch

from helpers import make_qkv


class DilatedAttention(torch.nn.Module):
    def __init__(self, segment_lengths: List[int], dilation_rates: List[int], is_causal: bool,
                 scale: Optional[float]):
        super().__init__()
        self.segment_lengths = segment_lengths
        self.dilation_rates = dilation_rates
        self.is_causal = is_causal
        self.scale = scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.ops.dilated_attention.dilated_attention(
            q, k, v, self.segment_lengths, self.dilation_rates, 0.0, self.is_causal, self.scale
        )


FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    import torch
    lib, model_path, inputs_path, out_path = sys.argv[1:]
    torch.ops.load_library(lib)
    model = torch.jit.load(model_path)
    q, k, v = torch.load(inputs_path)
    torch.save(model(q, k, v), out_path)
    """
)


def test_scripted_module_in_fresh_process(op, lib_path, tmp_path):
    module = DilatedAttention([8, 16, 32], [1, 2, 4], True, 0.3)
    scripted = torch.jit.script(module)
    q, k, v = make_qkv((2, 32, 3, 8), torch.float32, "transposed")
    expected = op(q, k, v, [8, 16, 32], [1, 2, 4], 0.0, True, 0.3)
    torch.testing.assert_close(scripted(q, k, v), expected, atol=0, rtol=0)
    assert "dilated_attention::dilated_attention" in scripted.graph.str()

    paths = {name: tmp_path / f"{name}.pt" for name in ("model", "inputs", "out")}
    scripted.save(str(paths["model"]))
    torch.save((q, k, v), paths["inputs"])
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(lib_path),
         *(str(paths[n]) for n in ("model", "inputs", "out"))],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    torch.testing.assert_close(torch.load(paths["out"]), expected, atol=0, rtol=0)


def test_scripted_function_gradients(op):
    @torch.jit.script
    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.ops.dilated_attention.dilated_attention(q, k, v, [4, 8], [1, 2], 0.0, False,
                                                             None)

    q, k, v = make_qkv((1, 8, 2, 4), requires_grad=True)
    fn(q, k, v).sum().backward()
    scripted_grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    op(q, k, v, [4, 8], [1, 2], 0.0, False, None).sum().backward()
    for got, expected in zip(scripted_grads, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
