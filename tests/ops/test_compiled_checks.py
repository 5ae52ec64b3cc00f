"""Under torch.compile the public ops check values on CPU as in eager (DESIGN 2): the checks
were skipped while compiling, so a compiled call returned NaN where eager raised, and
inplace_backward, whose safety checks do not trace, overwrote a leaf."""
import pytest
import torch

import fastrl.ops as ops

NAN = float("nan")


def nan_at(x, *index):
    x = x.clone()
    x[index] = NAN
    return x


def cases():
    rewards, mask = torch.randn(2, 5), torch.ones(2, 5)
    steps = torch.zeros(2, 5)
    steps[:, -1] = 1
    logits, labels = torch.randn(3, 7), torch.tensor([1, 2, 3])
    hidden, weight = torch.randn(3, 4), torch.randn(7, 4)
    ids = torch.tensor([0, 0, 1, 1])
    return {
        "discounted_returns": (lambda: ops.discounted_returns(nan_at(rewards, 0, 1), mask, 0.9),
                               "rewards contains NaN or Inf"),
        "gae": (lambda: ops.gae(rewards, nan_at(rewards, 1, 2), mask, 1.0, 0.95), "values contains NaN or Inf"),
        "min_form_returns": (lambda: ops.min_form_returns(nan_at(rewards, 0, 4), steps, mask),
                             "scores contains NaN or Inf"),
        "broadcast_to_tokens": (lambda: ops.broadcast_to_tokens(torch.tensor([1.0, NAN]), mask),
                                "advantages contains NaN or Inf"),
        "group_advantages ids": (lambda: ops.group_advantages(torch.randn(4), ids * 9),
                                 r"group_ids must be in \[0, 4\)"),
        "logprobs_from_logits": (lambda: ops.logprobs_from_logits(nan_at(logits, 1, 1), labels).logprob,
                                 r"logits contains NaN or \+Inf"),
        "logprobs_from_logits labels": (lambda: ops.logprobs_from_logits(logits, torch.tensor([1, 2, 7])).logprob,
                                        r"labels must be in \[0, 7\)"),
        "linear_logprobs": (lambda: ops.linear_logprobs(nan_at(hidden, 2, 0), weight, labels).logprob,
                            "hidden contains NaN or Inf"),
        "sample": (lambda: ops.sample(nan_at(logits, 0, 3), seeds=torch.arange(3)).tokens,
                   r"logits contains NaN or \+Inf"),
        "sample range": (lambda: ops.sample(logits * 1e30, temperature=1e-9, seeds=torch.arange(3)).tokens,
                         "logits / temperature leave float32's range"),
        "risk_advantages ids": (lambda: ops.risk_advantages(torch.randn(4), ids - 1), r"group_ids must be in \[0, 4\)"),
    }


@pytest.mark.parametrize("name", list(cases()))
def test_a_compiled_op_checks_values_on_cpu(name):
    call, message = cases()[name]
    with pytest.raises(ValueError, match=message):
        call()
    torch._dynamo.reset()
    with pytest.raises((RuntimeError, ValueError), match=message):
        torch.compile(call, fullgraph=True)()


def test_compiled_inplace_backward_leaves_a_leaf_and_shared_rows_alone():
    labels = torch.tensor([1, 2, 3])
    leaf = torch.randn(3, 5, requires_grad=True)
    before = leaf.detach().clone()
    (want,) = torch.autograd.grad(ops.logprobs_from_logits(leaf, labels).logprob.sum(), leaf)
    compiled = torch.compile(lambda x: ops.logprobs_from_logits(x, labels, inplace_backward=True).logprob.sum(),
                             fullgraph=True)
    compiled(leaf).backward()
    assert torch.equal(leaf.detach(), before)
    torch.testing.assert_close(leaf.grad, want)
    row = torch.randn(1, 5, requires_grad=True)
    (want,) = torch.autograd.grad(ops.logprobs_from_logits((row * 2).expand(3, 5), labels).logprob.sum(), row)
    (got,) = torch.autograd.grad(compiled((row * 2).expand(3, 5)), row)
    torch.testing.assert_close(got, want)
