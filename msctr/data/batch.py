"""A batch of column tensors: what every model's `forward` receives."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    scenario: torch.Tensor  # [B] int64, in [0, num_scenarios)
    sparse: torch.Tensor  # [B, F] int64, one column per schema.sparse field (0 = OOV)
    dense: torch.Tensor  # [B, D] float32 (D may be 0)
    label: torch.Tensor  # [B] float32 in {0, 1}
    partition: torch.Tensor  # [B] int64 (0 when the dataset has no partition)
    # one entry per schema.sequences: ids [B, L, K] (K attribute columns), mask [B, L] bool
    seq_ids: tuple[torch.Tensor, ...] = ()
    seq_mask: tuple[torch.Tensor, ...] = ()

    def __len__(self) -> int:
        return self.label.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        def move(v):
            if isinstance(v, tuple):
                return tuple(t.to(device, non_blocking=True) for t in v)
            return v.to(device, non_blocking=True)

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})
