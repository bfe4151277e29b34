"""Fixed random subsets of a layer's edges, so that recording a large layer stays cheap."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

#: ``read(index)``: the values at the flat positions ``index`` (1-D), or every value flattened for ``None``
Reader = Callable[[Optional[Tensor]], Tensor]


def tensor_reader(values: Tensor) -> Reader:
    """A :data:`Reader` of a tensor's values.

    Raises:
        Nothing; the reader raises torch's ``IndexError``/``RuntimeError`` for an index out of range.
    """
    flat = values.detach().reshape(-1)
    return lambda index: flat if index is None else flat.index_select(0, index)


class EdgeSubsets:
    """One fixed random subset of edges per layer and tensor size, drawn once from its own generator.

    Statistics of a tensor larger than ``max_edges`` come from ``max_edges`` of
    its entries; those that need a sort from the first ``sort_edges`` of them.
    The subsets are nested, so every statistic looks at the same edges, and
    the indices of each part are kept in ascending order (a gather in memory
    order is much faster on a large layer than a random one). Counts and
    rates are exact up to ``exact_edges`` edges (``None``: always).

    Args:
        max_edges, sort_edges: subset sizes (positive ints).
        exact_edges: largest layer whose counts are exact, or None.
        seed: seed of the subsets' generator (never the global one).
    Raises:
        Nothing of its own (the sizes are checked by :class:`ddc.recorder.Recorder`).
    """

    def __init__(self, max_edges: int, sort_edges: int, exact_edges: Optional[int], seed: int = 0):
        self.max_edges, self.sort_edges, self.exact_edges = max_edges, sort_edges, exact_edges
        self.generator = torch.Generator().manual_seed(seed)
        self.indices: Dict[Tuple[str, int], Tensor] = {}

    def counts_exact(self, numel: int) -> bool:
        """Whether counts and rates over ``numel`` edges are exact (else read on the subset).

        Raises:
            Nothing.
        """
        return self.exact_edges is None or numel <= self.exact_edges

    def index(self, layer: str, numel: int, limit: int, device: torch.device) -> Optional[Tensor]:
        """Flat positions (1-D int64) of ``layer``'s subset of ``limit`` of ``numel`` edges; None when ``numel <= limit``.

        Raises:
            Nothing of its own.
        """
        if numel <= limit:
            return None
        key = (layer, numel)
        if key not in self.indices:
            size = max(self.max_edges, self.sort_edges)
            perm = torch.randperm(numel, generator=self.generator)[:size]
            head, tail = perm[: self.sort_edges], perm[self.sort_edges :]
            self.indices[key] = torch.cat([head.sort().values, tail.sort().values]).to(device)
        return self.indices[key][:limit]

    def read(self, layer: str, numel: int, reader: Reader, device: torch.device, limit: Optional[int] = None) -> Tensor:
        """The values of ``layer``'s subset of ``limit`` edges (default ``max_edges``), or all when fewer, as 1-D.

        Raises:
            Nothing of its own; ``reader``'s errors pass through.
        """
        return reader(self.index(layer, numel, self.max_edges if limit is None else limit, device))

    def sample(self, layer: str, values: Tensor, limit: Optional[int] = None) -> Tensor:
        """:meth:`read` of a tensor: ``values`` flattened, or its subset of ``limit`` entries.

        Raises:
            Nothing of its own.
        """
        return self.read(layer, values.numel(), tensor_reader(values), values.device, limit)

    def samples(self, layer: str, numel: int, reader: Reader, device: torch.device) -> Tuple[Tensor, Tensor]:
        """The moments sample (``max_edges``) and the sort sample (``sort_edges``), the second cut
        from the first when it can be.

        Raises:
            Nothing of its own; ``reader``'s errors pass through.
        """
        moments = self.read(layer, numel, reader, device)
        if numel > self.max_edges and self.sort_edges <= self.max_edges:
            return moments, moments[: self.sort_edges]
        return moments, self.read(layer, numel, reader, device, self.sort_edges)

    def state_dict(self) -> dict:
        """The drawn subsets (on the CPU) and the generator's state.

        Raises:
            Nothing.
        """
        return {"subsets": {key: index.cpu() for key, index in self.indices.items()}, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Restore :meth:`state_dict`'s output, the subsets moved to ``device``.

        Raises:
            KeyError: ``state`` lacks ``subsets`` or ``generator``.
            RuntimeError, TypeError: ``generator`` is not a valid generator state (torch).
        """
        self.indices = {key: index.to(device) for key, index in state["subsets"].items()}
        self.generator.set_state(state["generator"])
