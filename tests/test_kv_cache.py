"""The roomy key/value cache: the same numbers as transformers' DynamicLayer, written in place instead of copied
each step, and what the decoder hands the model."""

import pytest
import torch
from transformers import DynamicCache, LlamaForCausalLM

from teams_rl.llm.kv_cache import RoomyLayer, roomy_cache, stacked_cache
from teams_rl.llm.prefix_cache import cache_keyword


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()


def _greedy(model, cache, prompt: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Logits of each step of a greedy decode of ``prompt`` (one row, or a left-padded batch without padding)."""
    out, ids = [], prompt
    mask = torch.ones_like(prompt)
    with torch.inference_mode():
        for _ in range(steps):
            step = model(input_ids=ids, attention_mask=mask, use_cache=True, **{cache_keyword(): cache})
            logits = step.logits[:, -1]
            out.append(logits)
            ids = logits.argmax(-1, keepdim=True)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    return out


def test_same_logits_as_dynamic_cache_across_reallocations(model):
    prompt = torch.randint(0, 128, (3, 11), generator=torch.Generator().manual_seed(1))
    cache = roomy_cache()
    for _ in range(model.config.num_hidden_layers):
        cache.layers.append(RoomyLayer(spare=5))  # 40 steps: several reallocations
    roomy = _greedy(model, cache, prompt, 40)
    dynamic = _greedy(model, DynamicCache(), prompt, 40)
    assert all(torch.equal(a, b) for a, b in zip(roomy, dynamic, strict=True))
    assert isinstance(cache.layers[0], RoomyLayer) and cache.get_seq_length() == 11 + 39


def test_a_step_writes_in_place_until_the_room_runs_out():
    layer = RoomyLayer(spare=4)
    k = torch.randn(2, 1, 6, 8)
    layer.update(k, -k)
    storage = layer.keys.untyped_storage().data_ptr()
    for step in range(4):
        new = torch.full((2, 1, 1, 8), float(step))
        keys, values = layer.update(new, -new)
        assert keys.untyped_storage().data_ptr() == storage  # DynamicLayer's cat makes a new tensor every step
        assert torch.equal(keys[:, :, -1:], new) and torch.equal(values[:, :, -1:], -new)
    assert torch.equal(layer.keys[:, :, :6], k) and layer.get_seq_length() == 10
    layer.update(new, -new)  # the fifth token after the fill: one reallocation
    assert layer.keys.untyped_storage().data_ptr() != storage
    assert torch.equal(layer.keys[:, :, :6], k) and layer.get_seq_length() == 11


def test_filled_from_layers_and_selected_by_row():
    data = [(torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)) for _ in range(2)]
    cache = stacked_cache([data], [0])
    for layer, (k, v) in zip(cache.layers, data, strict=True):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
    cache.layers[0].batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(cache.layers[0].keys, data[0][0][[2, 0]])
    cache.layers[0].update(torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4))
    assert cache.layers[0].get_seq_length() == 6
    cache.layers[1].crop(-2)
    assert torch.equal(cache.layers[1].values, data[1][1][:, :, :3])


def test_the_decoder_hands_the_model_roomy_caches(tiny_model_dir):
    from teams_rl.llm.base import GenerationRequest, SamplingParams
    from teams_rl.llm.transformers_backend import TransformersBackend

    backend = TransformersBackend(tiny_model_dir, batch_size=2, device="cpu")
    model, _ = backend.load()
    seen = []
    forward = model.forward

    def spy(*args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        out = forward(*args, **kwargs)
        seen.append({type(layer) for layer in cache.layers})
        return out

    model.forward = spy
    sampling = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=6)
    requests = [GenerationRequest(({"role": "user", "content": f"hi {i}"},), sampling, seed=i) for i in range(3)]
    backend.generate(requests)
    assert seen and all(kinds == {RoomyLayer} for kinds in seen)


def test_stacked_parts_are_left_padded_with_zeros_and_rows_kept_in_place():
    a = [(torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4))]
    b = [(torch.randn(3, 2, 3, 4), torch.randn(3, 2, 3, 4))]
    cache = stacked_cache([a, b], [0, 2], room=3)
    layer = cache.layers[0]
    assert layer.keys.shape == (5, 2, 5, 4)
    assert torch.equal(layer.keys[:2], a[0][0]) and torch.equal(layer.values[2:, :, 2:], b[0][1])
    assert not layer.keys[2:, :, :2].any()  # the padding is zeros, never uninitialised memory
    storage = layer.keys.untyped_storage().data_ptr()
    layer.update(torch.ones(5, 2, 3, 4), torch.ones(5, 2, 3, 4))  # the room asked for: no reallocation
    assert layer.keys.untyped_storage().data_ptr() == storage
    expected = layer.keys[[1, 3, 4], :, 1:].clone()
    layer.keep_rows([1, 3, 4], drop_columns=1)
    assert torch.equal(layer.keys, expected) and layer.keys.untyped_storage().data_ptr() == storage
    with pytest.raises(ValueError, match="differ in width"):
        stacked_cache([a, b], [0, 0])
