"""A key/value cache that grows in steps instead of by one copy per token.

``transformers``' ``DynamicLayer`` appends each decoded token with ``torch.cat``, which copies the layer's whole
cache: at 32 rows and 500 positions that is about 0.9 GB moved per step for SmolLM2-135M, half of a decode step on a
2-core CPU (``bench/synthesis_overhead.py``'s notes). Here each layer keeps a buffer with room for ``spare`` more
positions; a step writes its token into the room and hands attention a view of the filled part. The buffer is
reallocated (one copy) only when the room runs out. The values, and so every row's text, are the same as with
``DynamicLayer``: only where they are stored changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers.cache_utils import DynamicCache, DynamicLayer

SPARE_POSITIONS = 64  # room added at each reallocation: one copy every 64 decoded tokens instead of one each


class RoomyLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are views of the filled part of larger buffers."""

    def __init__(self, spare: int = SPARE_POSITIONS):
        super().__init__()
        self.spare = spare
        self._buffers = None  # (keys, values), each [batch, kv heads, capacity, head dim]
        self._length = 0

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        if self._buffers is None or end > self._buffers[0].shape[-2]:
            self._grow(key_states, value_states, end + self.spare)
        keys, values = self._buffers
        keys[:, :, self._length : end].copy_(key_states)
        values[:, :, self._length : end].copy_(value_states)
        self._length = end
        self.keys, self.values = keys[:, :, :end], values[:, :, :end]
        return self.keys, self.values

    def _grow(self, key_states, value_states, capacity: int) -> None:
        buffers = []
        for new in (key_states, value_states):
            batch, heads, _, dim = new.shape
            buffers.append(new.new_empty((batch, heads, capacity, dim)))
        if self._length:
            buffers[0][:, :, : self._length].copy_(self.keys)
            buffers[1][:, :, : self._length].copy_(self.values)
        self._buffers = tuple(buffers)

    def reset(self) -> None:
        self._buffers, self._length = None, 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self._length = self.get_seq_length()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rebuild(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices) -> None:
        self._rebuild(lambda t: t[indices, ...])

    def _rebuild(self, change) -> None:
        if not self._length:
            return
        keys, values = change(self.keys), change(self.values)
        self._buffers, self._length = None, 0
        self.update(keys, values)


def roomy_cache(layers: Iterable[tuple[object, object]] = ()) -> DynamicCache:
    """A ``DynamicCache`` of ``RoomyLayer``s, filled with ``layers`` (per layer (keys, values)) when given;
    otherwise each layer is made on the model's first write to it."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = RoomyLayer
    for keys, values in layers:
        layer = RoomyLayer()
        layer.update(keys, values)
        cache.layers.append(layer)
    return cache
