"""BREEDS superclass hierarchies over ImageNet, built from the BREEDS hierarchy files.

BREEDS (Santurkar, Tsipras and Madry, 2020) groups ImageNet's 1000 classes into
superclasses using a modified WordNet hierarchy. This module rebuilds the four
standard BREEDS datasets exactly as MadryLab's reference construction does
(``robustness.tools.breeds_helpers``), from the three hierarchy files, in pure
Python:

1. Graph: keep only the edges into nodes from which some leaf (an ImageNet class
   of ``dataset_class_info.json``) is reachable, found by walking upwards from
   the leaves.
2. Level of a node: its depth below the root ``n00001740`` ("entity"); where
   several paths reach a node, the longest counts. "dummy" nodes of the modified
   hierarchy are ordinary nodes here and count towards the depth.
3. Candidate superclasses: the nodes at level L (optionally only those below an
   ancestor node), sorted by wnid.
4. Keep the candidates with at least N reachable leaves.
5. With one ``numpy.random.RandomState(2)``, for each kept superclass in that
   order, choose N of its reachable leaves (sorted by wnid) without replacement.

>>> [s.name for s in breeds_superclasses("living17")][:3]
['salamander', 'turtle', 'lizard']
"""

from __future__ import annotations

import functools
import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT_WNID = "n00001740"
"""WordNet id of "entity", the root of the hierarchy."""

SEED = 2
"""Seed of the one ``RandomState`` that picks every superclass's subclasses."""

REQUIRED_FILES = ("dataset_class_info.json", "class_hierarchy.txt", "node_names.txt")

SHIPPED_INFO_DIR = Path(__file__).resolve().parent / "breeds_data"
"""The copy of the BREEDS hierarchy files that ships with stratalens."""

_SOURCE_HINT = (
    "pass a folder holding dataset_class_info.json, class_hierarchy.txt and node_names.txt "
    "(from MadryLab/BREEDS-Benchmarks, imagenet_class_hierarchy/modified/), "
    "or None for the copy shipped with stratalens"
)


@dataclass(frozen=True)
class BreedsRecipe:
    """How one BREEDS dataset picks its superclasses and subclasses.

    Attributes
    ----------
    level : int
        Depth of the superclasses below the root (longest path).
    ancestor : str or None
        Only superclasses inside this node's subtree; None for the whole hierarchy.
    n_subclasses : int
        Subclasses (ImageNet classes) per superclass; superclasses with fewer
        reachable leaves are dropped.
    """

    level: int
    ancestor: str | None
    n_subclasses: int

    def __post_init__(self):
        if self.level < 0:
            raise ValueError(f"BreedsRecipe level={self.level} is negative; use a depth >= 0.")
        if self.n_subclasses < 1:
            raise ValueError(
                f"BreedsRecipe n_subclasses={self.n_subclasses} should be >= 1; "
                "use a positive number of subclasses per superclass."
            )


BREEDS_DATASETS: dict[str, BreedsRecipe] = {
    "entity13": BreedsRecipe(level=3, ancestor=None, n_subclasses=20),
    "entity30": BreedsRecipe(level=4, ancestor=None, n_subclasses=8),
    "living17": BreedsRecipe(level=5, ancestor="n00004258", n_subclasses=4),
    "nonliving26": BreedsRecipe(level=5, ancestor="n00021939", n_subclasses=4),
}
"""The four standard BREEDS datasets (the BREEDS paper's ``make_*`` functions)."""


@dataclass(frozen=True)
class BreedsSuperclass:
    """One superclass of a BREEDS dataset.

    Attributes
    ----------
    wnid : str
        WordNet id of the superclass node (may be a ``dummy*`` node).
    name : str
        Short name: the node's name in ``node_names.txt`` up to its first comma
        (``"snake"`` for ``"snake, serpent, ophidian"``); the full name is
        ``BreedsInfo.node_names[wnid]``.
    subclasses : tuple of str
        ImageNet wnids of its subclasses, in the order the random choice returned them.
    """

    wnid: str
    name: str
    subclasses: tuple[str, ...]


@dataclass(frozen=True)
class BreedsInfo:
    """The parsed BREEDS hierarchy files and the pruned graph built from them.

    Instances returned by :func:`load_breeds_info` are cached and shared: treat
    their dicts as read-only.

    Attributes
    ----------
    leaf_names : dict of str to str
        ImageNet wnid -> class name as written in ``dataset_class_info.json``
        (e.g. ``"tench, Tinca tinca"``).
    class_numbers : dict of str to int
        ImageNet wnid -> class number (0..999).
    node_names : dict of str to str
        Node wnid -> full name from ``node_names.txt``.
    children : dict of str to tuple of str
        Pruned graph: parent wnid -> its children, sorted by wnid. Only nodes
        from which some leaf is reachable appear.
    levels : dict of str to int
        Depth below the root (longest path) of every node reachable from the root.
    leaves_below : dict of str to tuple of str
        Node wnid -> the ImageNet classes reachable from it, sorted by wnid.
    """

    leaf_names: dict[str, str]
    class_numbers: dict[str, int]
    node_names: dict[str, str]
    children: dict[str, tuple[str, ...]]
    levels: dict[str, int]
    leaves_below: dict[str, tuple[str, ...]]

    def node_name(self, wnid: str) -> str:
        """Full name of a node (its wnid when ``node_names.txt`` has none)."""
        return self.node_names.get(wnid, self.leaf_names.get(wnid, wnid))

    def descendants(self, wnid: str) -> frozenset[str]:
        """``wnid`` and every node below it in the pruned graph."""
        seen = {wnid}
        todo = [wnid]
        while todo:
            for child in self.children.get(todo.pop(), ()):
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        return frozenset(seen)

    def nodes_at_level(self, level: int, ancestor: str | None = None) -> list[str]:
        """Nodes at depth ``level`` (inside ``ancestor``'s subtree if given), sorted by wnid."""
        if ancestor is not None and ancestor not in self.leaves_below:
            raise ValueError(
                f"ancestor {ancestor!r} is not a node of the pruned BREEDS hierarchy; "
                "use an inner node's wnid from node_names.txt, or None."
            )
        # BREEDS walks at most 20 levels below the ancestor; this hierarchy is 8 deep.
        inside = self.descendants(ancestor) if ancestor is not None else None
        return sorted(
            node
            for node, depth in self.levels.items()
            if depth == level and (inside is None or node in inside)
        )


def load_breeds_info(info_dir: str | Path | None = None) -> BreedsInfo:
    """Parse the BREEDS hierarchy files of ``info_dir`` and build the pruned graph.

    Parameters
    ----------
    info_dir : str or Path or None
        Folder holding ``dataset_class_info.json``, ``class_hierarchy.txt`` and
        ``node_names.txt``; None for the copy shipped in ``actors/datasets/breeds_data``.

    Returns
    -------
    BreedsInfo
        Cached per resolved folder: repeated calls return the same object.

    Raises
    ------
    ValueError
        If the folder or one of its files is missing or malformed.
    """
    folder = SHIPPED_INFO_DIR if info_dir is None else Path(info_dir).expanduser()
    return _load_cached(folder.resolve())


def breeds_superclasses(name: str, info: BreedsInfo | None = None) -> list[BreedsSuperclass]:
    """The superclasses of BREEDS dataset ``name``, in construction order.

    Parameters
    ----------
    name : str
        One of ``BREEDS_DATASETS``: ``entity13``, ``entity30``, ``living17``, ``nonliving26``.
    info : BreedsInfo or None
        Parsed hierarchy; None for the shipped copy.

    Returns
    -------
    list of BreedsSuperclass
        Ordered by superclass wnid; label ``i`` of the dataset is entry ``i``.
    """
    if name not in BREEDS_DATASETS:
        raise ValueError(
            f"Unknown BREEDS dataset {name!r}; use one of {', '.join(sorted(BREEDS_DATASETS))}."
        )
    return superclasses_from_recipe(BREEDS_DATASETS[name], info)


def superclasses_from_recipe(
    recipe: BreedsRecipe, info: BreedsInfo | None = None
) -> list[BreedsSuperclass]:
    """Superclasses chosen by ``recipe`` (steps 3-5 of the module docstring).

    Parameters
    ----------
    recipe : BreedsRecipe
    info : BreedsInfo or None
        Parsed hierarchy; None for the shipped copy.

    Returns
    -------
    list of BreedsSuperclass
    """
    info = load_breeds_info() if info is None else info
    candidates = info.nodes_at_level(recipe.level, recipe.ancestor)
    kept = [c for c in candidates if len(info.leaves_below[c]) >= recipe.n_subclasses]
    rng = np.random.RandomState(SEED)
    superclasses = []
    for wnid in kept:
        chosen = rng.choice(list(info.leaves_below[wnid]), recipe.n_subclasses, replace=False)
        superclasses.append(
            BreedsSuperclass(
                wnid=wnid,
                name=info.node_name(wnid).split(",")[0].strip(),
                subclasses=tuple(str(leaf) for leaf in chosen),
            )
        )
    return superclasses


# -- parsing and graph construction --------------------------------------------


@functools.lru_cache(maxsize=8)
def _load_cached(folder: Path) -> BreedsInfo:
    if not folder.is_dir():
        raise ValueError(f"BREEDS info_dir {str(folder)!r} is not a folder; {_SOURCE_HINT}.")
    for file_name in REQUIRED_FILES:
        if not (folder / file_name).is_file():
            raise ValueError(f"BREEDS info_dir {str(folder)!r} has no {file_name}; {_SOURCE_HINT}.")
    class_info = _read_class_info(folder / "dataset_class_info.json")
    edges = _read_edges(folder / "class_hierarchy.txt")
    node_names = _read_node_names(folder / "node_names.txt")

    leaf_names = {wnid: name for _, wnid, name in class_info}
    class_numbers = {wnid: number for number, wnid, _ in class_info}
    children = _prune(edges, leaf_names)
    levels = _longest_depths(children, folder / "class_hierarchy.txt")
    return BreedsInfo(
        leaf_names=leaf_names,
        class_numbers=class_numbers,
        node_names=node_names,
        children=children,
        levels=levels,
        leaves_below=_leaves_below(children, leaf_names.keys()),
    )


def _read_class_info(path: Path) -> list[tuple[int, str, str]]:
    try:
        rows = json.loads(path.read_text())
        parsed = [(int(number), str(wnid), str(name)) for number, wnid, name in rows]
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{path} is not a JSON list of [class_number, wnid, name] ({error}); "
            f"replace it with an unchanged copy: {_SOURCE_HINT}."
        ) from None
    return parsed


def _read_edges(path: Path) -> list[tuple[str, str]]:
    edges = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(
                f"{path} line {number} reads {line!r}, not 'parent_wnid child_wnid'; "
                f"replace it with an unchanged copy: {_SOURCE_HINT}."
            )
        edges.append((fields[0], fields[1]))
    return edges


def _read_node_names(path: Path) -> dict[str, str]:
    names = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        if len(fields) != 2:
            raise ValueError(
                f"{path} line {number} reads {line!r}, not 'wnid<TAB>name'; "
                f"replace it with an unchanged copy: {_SOURCE_HINT}."
            )
        names[fields[0]] = fields[1]
    return names


def _prune(edges: list[tuple[str, str]], leaves) -> dict[str, tuple[str, ...]]:
    """Keep the edges into nodes that have a leaf below them (or are one)."""
    parents: dict[str, set[str]] = {}
    for parent, child in edges:
        parents.setdefault(child, set()).add(parent)
    kept: dict[str, set[str]] = {}
    # Leaves absent from the edge list are not part of the hierarchy (BREEDS skips them too).
    seen = {leaf for leaf in leaves if leaf in parents}
    todo = deque(seen)
    while todo:
        node = todo.popleft()
        for parent in parents.get(node, ()):
            kept.setdefault(parent, set()).add(node)
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return {parent: tuple(sorted(kids)) for parent, kids in sorted(kept.items())}


def _longest_depths(children: dict[str, tuple[str, ...]], path: Path) -> dict[str, int]:
    """Longest-path depth below the root of every node reachable from it."""
    reachable = {ROOT_WNID}
    todo = [ROOT_WNID]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in reachable:
                reachable.add(child)
                todo.append(child)
    indegree = dict.fromkeys(reachable, 0)
    for node in reachable:
        for child in children.get(node, ()):
            indegree[child] += 1
    depth = dict.fromkeys(reachable, 0)
    ready = deque(node for node, count in indegree.items() if count == 0)
    done = 0
    while ready:
        node = ready.popleft()
        done += 1
        for child in children.get(node, ()):
            depth[child] = max(depth[child], depth[node] + 1)
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    if done != len(reachable):
        stuck = sorted(node for node, count in indegree.items() if count > 0)
        raise ValueError(
            f"{path} has a cycle through {stuck[0]!r}; the hierarchy must be a DAG: "
            f"replace it with an unchanged copy: {_SOURCE_HINT}."
        )
    return depth


def _leaves_below(children: dict[str, tuple[str, ...]], leaves) -> dict[str, tuple[str, ...]]:
    """ImageNet classes reachable from each node, sorted by wnid.

    As in BREEDS, the walk stops at a leaf: a leaf's own children (if the
    hierarchy gave it any) are not counted through it.
    """
    leaf_set = set(leaves)
    memo: dict[str, frozenset[str]] = {}

    def below(node: str) -> frozenset[str]:
        if node not in memo:
            found: set[str] = set()
            for child in children.get(node, ()):
                found |= {child} if child in leaf_set else below(child)
            memo[node] = frozenset(found)
        return memo[node]

    nodes = set(children) | {kid for kids in children.values() for kid in kids}
    return {
        node: tuple(sorted(below(node) | ({node} if node in leaf_set else set())))
        for node in sorted(nodes)
    }
