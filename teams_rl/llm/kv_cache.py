"""A key/value cache that grows in steps instead of by one copy per token.

``transformers``' ``DynamicLayer`` appends each decoded token with ``torch.cat``, which copies the layer's whole
cache: at 32 rows and 500 positions that is about 0.9 GB moved per step for SmolLM2-135M, half of a decode step on a
2-core CPU. Here each layer keeps a buffer with room for ``spare`` more positions; a step writes its token into the
room and hands attention a view of the filled part, ``buffer[:rows, :, start:end]``. The buffer is reallocated (one
copy) only when the room runs out; dropping finished rows moves the rows that stay up in place, and dropping leading
columns only moves ``start``. The values, and so every row's text, are the same as with ``DynamicLayer``: only where
they are stored changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers.cache_utils import DynamicCache, DynamicLayer

SPARE_POSITIONS = 64  # room added at each reallocation: one copy every 64 decoded tokens instead of one each


class RoomyLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are views of the filled part of larger buffers."""

    def __init__(self, spare: int = SPARE_POSITIONS):
        super().__init__()
        self.spare = spare
        self._buffers = None  # (keys, values), each [row capacity, kv heads, position capacity, head dim]
        self._rows = self._start = self._end = 0

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._buffers is None:
            self._rows = key_states.shape[0]
        end = self._end + key_states.shape[-2]
        if self._buffers is None or end > self._buffers[0].shape[-2]:
            self._grow(key_states, end - self._start + self.spare)
            end = self._end + key_states.shape[-2]
        keys, values = self._buffers
        keys[: self._rows, :, self._end : end].copy_(key_states)
        values[: self._rows, :, self._end : end].copy_(value_states)
        self._end = end
        self._view()
        return self.keys, self.values

    def _grow(self, like, capacity: int) -> None:
        """New buffers of ``capacity`` positions holding what is filled so far from column 0."""
        _, heads, _, dim = like.shape
        filled = self._end - self._start
        buffers = tuple(like.new_empty((self._rows, heads, capacity, dim)) for _ in range(2))
        if filled:
            buffers[0][:, :, :filled].copy_(self.keys)
            buffers[1][:, :, :filled].copy_(self.values)
        self._buffers, self._start, self._end = buffers, 0, filled

    def _view(self) -> None:
        keys, values = self._buffers
        self.keys = keys[: self._rows, :, self._start : self._end]
        self.values = values[: self._rows, :, self._start : self._end]

    def keep_rows(self, rows: Sequence[int], drop_columns: int = 0) -> None:
        """Keep only ``rows`` (ascending positions in the batch), moved up in place, and drop the first
        ``drop_columns`` positions (by moving the view's start: nothing is copied for them)."""
        self._start += drop_columns
        for buffer in self._buffers:
            for j, i in enumerate(rows):
                if i != j:  # rows ascend, so row i >= j: the source is never a row already overwritten
                    buffer[j, :, self._start : self._end].copy_(buffer[i, :, self._start : self._end])
        self._rows = len(rows)
        self._view()

    def reset(self) -> None:
        self._buffers, self._rows, self._start, self._end = None, 0, 0, 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self._end = self._start + self.get_seq_length()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rebuild(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices) -> None:
        self._rebuild(lambda t: t[indices, ...])

    def _rebuild(self, change) -> None:
        if self._end == self._start:
            return
        keys, values = change(self.keys), change(self.values)
        self._buffers, self._rows, self._start, self._end = None, 0, 0, 0
        self.update(keys, values)


def roomy_cache() -> DynamicCache:
    """An empty ``DynamicCache`` whose layers are ``RoomyLayer``s, each made on the model's first write to it."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = RoomyLayer
    return cache


def stacked_cache(parts: Sequence[Sequence[tuple[object, object]]], pads: Sequence[int], room: int = 0):
    """One cache holding the rows of several, part ``p`` left-padded by ``pads[p]`` zero positions (masked by the
    caller) so that all are as wide; each value is copied once, into buffers with ``room`` + spare free positions.
    A part is, per layer, (keys, values) of shape [rows, kv heads, positions, head dim]."""
    cache = roomy_cache()
    widths = {pad + layers[0][0].shape[-2] for layers, pad in zip(parts, pads, strict=True)}
    if len(widths) != 1:
        raise ValueError(f"padded parts differ in width: {sorted(widths)}")
    width = widths.pop()
    for per_part in zip(*parts, strict=True):
        layer = RoomyLayer()
        first = per_part[0][0]
        rows = sum(keys.shape[0] for keys, _ in per_part)
        shape = (rows, first.shape[1], width + room + layer.spare, first.shape[3])
        buffers = (first.new_empty(shape), first.new_empty(shape))
        row = 0
        for (keys, values), pad in zip(per_part, pads, strict=True):
            n = keys.shape[0]
            for buffer, data in zip(buffers, (keys, values), strict=True):
                buffer[row : row + n, :, :pad].zero_()
                buffer[row : row + n, :, pad:width].copy_(data)
            row += n
        layer.lazy_initialization(first, first)
        layer._buffers, layer._rows, layer._start, layer._end = buffers, rows, 0, width
        layer._view()
        cache.layers.append(layer)
    return cache
