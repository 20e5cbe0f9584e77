"""Linear layers packed for oneDNN: the same products, a bit-exact way back, the same greedy answers."""

from __future__ import annotations

import pytest
import torch
from genhelpers import TINY_SPEC, noise_requests
from torch import nn

from affect_llm.generation.backend import DecodingSettings
from affect_llm.generation.hf_backend import HFBackend
from affect_llm.generation.packed_linear import (
    PackedLinear,
    measure_packing,
    pack_linear_layers,
    packing_available,
    unpack_linear_layers,
)
from affect_llm.loading.build import build_model

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch has no oneDNN")



@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 48), (5, 48), (2, 7, 48)])
def test_a_packed_layer_computes_what_the_plain_one_does(bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(48, 80, bias=bias)
    x = torch.randn(shape)
    with torch.no_grad():
        expected = linear(x)
        got = PackedLinear(linear)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_unpacking_restores_every_weight_to_the_bit_and_the_tied_output_matrix() -> None:
    model, _ = build_model(TINY_SPEC, seed=0)
    llm = model.language_model
    before = {name: tensor.clone() for name, tensor in llm.state_dict().items()}
    tied = llm.get_output_embeddings().weight is llm.get_input_embeddings().weight
    linears = sum(type(m) is nn.Linear for m in llm.modules())
    assert pack_linear_layers(llm) == linears > 0
    assert not any(type(m) is nn.Linear for m in llm.modules())
    assert unpack_linear_layers(llm) == linears
    after = llm.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert (llm.get_output_embeddings().weight is llm.get_input_embeddings().weight) == tied


def test_a_packed_layer_refuses_to_train() -> None:
    layer = PackedLinear(nn.Linear(8, 4))
    with pytest.raises(RuntimeError, match="unpack_linear_layers"):
        layer(torch.randn(2, 8, requires_grad=True))


def test_the_hf_backend_decodes_packed_with_the_same_greedy_answers() -> None:
    plain_model, processor = build_model(TINY_SPEC, seed=0)
    packed_model, _ = build_model(TINY_SPEC, seed=0)
    settings = DecodingSettings(max_new_tokens=12)
    plain = HFBackend(plain_model, processor, pack_weights=False)
    packed = HFBackend(packed_model, processor, pack_weights=True)
    assert not any(isinstance(m, PackedLinear) for m in plain_model.modules())
    assert any(isinstance(m, PackedLinear) for m in packed_model.language_model.modules())
    requests = noise_requests(processor)
    assert packed.generate(requests, settings) == plain.generate(requests, settings)
    # Streaming (the chat) goes through generate() on the same packed layers.
    assert "".join(packed.stream(requests[0], settings)) == plain.generate(requests[:1], settings)[0]


def test_a_compiled_graph_keeps_the_packed_matmul_and_its_products() -> None:
    """Compiled decoding runs on packed weights: inductor calls the custom op as it stands."""
    torch.manual_seed(0)
    layer = PackedLinear(nn.Linear(48, 80))
    x = torch.randn(3, 48)
    compiled = torch.compile(layer, fullgraph=True)  # fullgraph: a graph break would fail here
    with torch.no_grad():
        assert torch.equal(compiled(x), layer(x))


def test_the_hf_backend_packs_where_packing_measures_faster_at_its_rows() -> None:
    """Left to measure (the default), the backend times both layouts on its LLM's own layers at the rows
    it was told to expect and holds the faster one; which one depends on the cores, so the test checks
    that the choice follows the measurement, and that a model with nothing to pack is not measured."""
    for rows in (1, 16):
        model, processor = build_model(TINY_SPEC, seed=0)
        backend = HFBackend(model, processor, rows=rows)
        probe = backend.packing
        assert probe is not None and probe.rows == rows and probe.plain_ms > 0 and probe.packed_ms > 0
        assert probe.pays == (probe.packed_ms < 0.95 * probe.plain_ms)
        assert any(isinstance(m, PackedLinear) for m in model.language_model.modules()) == probe.pays
    assert measure_packing(nn.Sequential(nn.Embedding(4, 4), nn.LayerNorm(4))) is None
