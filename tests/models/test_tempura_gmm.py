"""TEMPURA's mixture heads: hand-derived outputs, sampling only in training, uncertainty values."""

from __future__ import annotations

import math

import pytest
import torch

from m3sgg.models.tempura.gmm import GMMHead, gmm_state_from_original


def _head(
    activation: str,
    mu_biases: list[list[float]],
    pi_biases: list[float],
    var_biases: list[list[float]] | None = None,
) -> GMMHead:
    """A head whose outputs depend on its biases only (zero weights)."""
    k, c = len(mu_biases), len(mu_biases[0])
    head = GMMHead(4, c, k=k, activation=activation)  # type: ignore[arg-type]
    with torch.no_grad():
        head.proj.weight.zero_()
        for i in range(k):
            head.proj.bias[head.fused_index("mu", i)] = torch.tensor(mu_biases[i])
            head.proj.bias[head.fused_index("pi", i)] = pi_biases[i]
            if var_biases is not None:
                head.proj.bias[head.fused_index("var", i)] = torch.tensor(var_biases[i])
    return head


def test_softmax_mixture_by_hand() -> None:
    # pi = softmax(0, ln 3) = (1/4, 3/4)
    # softmax(ln1, ln1, ln2) = (1/4, 1/4, 1/2); softmax(0, 0, 0) = 1/3 each
    head = _head("softmax", [[0.0, 0.0, math.log(2)], [0.0, 0.0, 0.0]], [0.0, math.log(3)]).eval()
    out = head(torch.randn(2, 4))
    expected = torch.tensor([0.25 * 0.25 + 0.75 / 3, 0.25 * 0.25 + 0.75 / 3, 0.25 * 0.5 + 0.75 / 3])
    torch.testing.assert_close(out, expected.expand(2, 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.sum(1), torch.ones(2))


def test_sigmoid_mixture_by_hand() -> None:
    # sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4; weights 1/4, 3/4 -> 1/8 + 9/16 = 11/16
    head = _head("sigmoid", [[0.0], [math.log(3)]], [0.0, math.log(3)]).eval()
    torch.testing.assert_close(head(torch.randn(3, 4)), torch.full((3, 1), 11 / 16))


def test_uncertainty_by_hand() -> None:
    # act(mu) = 1/2, 3/4; var = sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4; pi = 1/4, 3/4
    head = _head("sigmoid", [[0.0], [math.log(3)]], [0.0, math.log(3)], [[0.0], [math.log(3)]])
    aleatoric, epistemic = head.uncertainty(torch.randn(1, 4))
    mean = 11 / 16
    torch.testing.assert_close(aleatoric, torch.tensor([[0.25 * 0.5 + 0.75 * 0.75]]))
    expected_ep = 0.25 * (0.5 - mean) ** 2 + 0.75 * (0.75 - mean) ** 2
    torch.testing.assert_close(epistemic, torch.tensor([[expected_ep]]))


def test_attention_outputs_sum_to_one_in_both_modes() -> None:
    head = GMMHead(16, 3, k=6, activation="softmax")
    x = torch.randn(20, 16) * 4
    torch.testing.assert_close(head.train()(x).sum(1), torch.ones(20))
    torch.testing.assert_close(head.eval()(x).sum(1), torch.ones(20))


def test_evaluation_is_deterministic_and_draws_nothing() -> None:
    head = GMMHead(16, 17, k=4, activation="sigmoid").eval()
    x = torch.randn(8, 16)
    state = torch.get_rng_state()
    first, second = head(x), head(x)
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)


def test_training_samples_each_component_by_hand() -> None:
    # one component, mu = 0, var = sigmoid(0) = 1/2: output = sigmoid(sqrt(1/2) * eps)
    head = _head("sigmoid", [[0.0, 0.0]], [0.0], [[0.0, 0.0]]).train()
    x = torch.randn(5, 4)
    torch.manual_seed(3)
    out = head(x)
    torch.manual_seed(3)
    eps = torch.randn(5, 2)
    torch.testing.assert_close(out, torch.sigmoid(math.sqrt(0.5) * eps))
    assert not torch.allclose(out, head.eval()(x))


def test_fused_layout_from_original_keys() -> None:
    k, c, d = 2, 3, 4
    original = {}
    for part, rows in (("mu", c), ("var", c), ("pi", 1)):
        for i in range(1, k + 1):
            original[f"a.heads.{part}_{i}.weight"] = torch.randn(rows, d)
            original[f"a.heads.{part}_{i}.bias"] = torch.randn(rows)
    head = GMMHead(d, c, k=k, activation="softmax")
    head.load_state_dict(gmm_state_from_original(original, "a.", k))
    assert torch.equal(
        head.proj.weight[head.fused_index("var", 1)], original["a.heads.var_2.weight"]
    )
    assert torch.equal(head.proj.bias[head.fused_index("pi", 0)], original["a.heads.pi_1.bias"])
    del original["a.heads.pi_2.bias"]
    with pytest.raises(KeyError, match=r"a\.heads\.pi_2\.bias"):
        gmm_state_from_original(original, "a.", k)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k >= 1"):
        GMMHead(4, 3, k=0, activation="softmax")
    with pytest.raises(ValueError, match="activation"):
        GMMHead(4, 3, k=2, activation="relu")  # type: ignore[arg-type]


def test_evaluation_from_class_leaves_out_the_first_columns_by_hand() -> None:
    """The object head's evaluation: the mixture of softmax(mu_k[1:]). Component 1 logits
    [5, 1, 0], component 2 [0, 0, ln 3], weights 1/2: softmax over the last two columns gives
    [e/(e+1), 1/(e+1)] and [1/4, 3/4]. Training samples over every column."""
    head = _head("softmax", [[5.0, 1.0, 0.0], [0.0, 0.0, math.log(3.0)]], [0.0, 0.0]).eval()
    e = math.e
    expected = [0.5 * (e / (e + 1) + 0.25), 0.5 * (1 / (e + 1) + 0.75)]
    out = head(torch.zeros(2, 4), from_class=1)
    torch.testing.assert_close(out, torch.tensor([expected, expected]))
    assert head(torch.zeros(2, 4)).shape == (2, 3)
    assert head.train()(torch.zeros(2, 4), from_class=1).shape == (2, 3)
