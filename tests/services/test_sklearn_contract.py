"""scikit-learn's own tests of its clustering metrics, run against ours.

At import this module reads ``sklearn/metrics/cluster/tests/test_supervised.py`` from
the installed scikit-learn (no vendored copy: an upgrade brings its new tests), turns
its imports of ``sklearn.metrics`` names into bindings of our functions
(``OURS``), executes it, and takes each of its ``test_*`` functions as a test of this
module under the same name, parametrized as scikit-learn parametrizes it. A name that
scikit-learn's module imports and ``OURS`` does not map stops the import: every name
is rebound, none falls through to scikit-learn's code.

The source is changed by three rules only, each listed here and checked to still
apply (``test_each_adaptation_still_applies``):

1. Wording (``OUR_WORDING``). Where a test matches scikit-learn's message text, the
   pattern is swapped for one that matches ours, so the test still checks the type and
   that the message names the same problem. In ``test_error_messages_on_wrong_input``
   (labelings of different lengths, 2-d labels) and ``test_check_clustering_error``
   (the warning about continuous labels).
2. Deprecation (``NOT_DEPRECATED``). ``test_public_entropy_deprecation`` expects the
   FutureWarning of scikit-learn's public ``entropy``, deprecated in 1.8 for removal in
   1.10. That is scikit-learn's API history, not a property of the score; our
   ``entropy`` is not deprecated, so the ``pytest.warns(FutureWarning, ...)`` block
   becomes one that asserts no FutureWarning is raised, and the call still runs.
3. Environment (``array_api_environment``). ``test_entropy_array_api`` skips itself
   unless ``SCIPY_ARRAY_API`` is set (scikit-learn's CI sets it for that job); it is
   set for that test here, and its CUDA cases skip when no CUDA device is present.
   Namespaces that are not installed (array_api_strict, CuPy, dpnp) and devices torch
   was not built for (MPS, XPU) are skipped by scikit-learn's own helper, with its
   reason.
"""

from __future__ import annotations

import ast
import inspect
import types
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import sklearn
import sklearn.metrics.cluster as skc
from scipy import sparse as sp

from services.metrics import _validation, clustering

SKLEARN_TESTS = Path(sklearn.__file__).parent / "metrics" / "cluster" / "tests"
SKLEARN_TESTS = SKLEARN_TESTS / "test_supervised.py"
# every name imported from these modules (or modules under them) is rebound to ours
REBOUND_PACKAGE = "sklearn.metrics"
OURS = {
    "adjusted_mutual_info_score": clustering.adjusted_mutual_info_score,
    "adjusted_rand_score": clustering.adjusted_rand_score,
    "completeness_score": clustering.completeness_score,
    "contingency_matrix": clustering.contingency_matrix,
    "expected_mutual_information": clustering.expected_mutual_information,
    "fowlkes_mallows_score": clustering.fowlkes_mallows_score,
    "homogeneity_completeness_v_measure": clustering.homogeneity_completeness_v_measure,
    "homogeneity_score": clustering.homogeneity_score,
    "mutual_info_score": clustering.mutual_info_score,
    "normalized_mutual_info_score": clustering.normalized_mutual_info_score,
    "pair_confusion_matrix": clustering.pair_confusion_matrix,
    "rand_score": clustering.rand_score,
    "v_measure_score": clustering.v_measure_score,
    # scikit-learn's private helpers that its tests call directly
    "_entropy": clustering.entropy,
    "entropy": clustering.entropy,
    "_generalized_average": clustering._average,
    "check_clusterings": _validation.check_labelings,
}
# rule 1: scikit-learn's pattern -> (ours, the test it is in)
OUR_WORDING = {
    r"Found input variables with inconsistent numbers of samples: \[2, 3\]": (
        r"labels_true has 2 samples but labels_pred has 3",
        "test_error_messages_on_wrong_input",
    ),
    r"labels_true must be 1D: shape is \(2": (
        r"labels_true should be 1-d, got shape \(2",
        "test_error_messages_on_wrong_input",
    ),
    r"labels_pred must be 1D: shape is \(2": (
        r"labels_pred should be 1-d, got shape \(2",
        "test_error_messages_on_wrong_input",
    ),
    (
        "Clustering metrics expects discrete values but received continuous values for "
        "label, and continuous values for target"
    ): (
        "labels_true and labels_pred hold continuous values",
        "test_check_clustering_error",
    ),
}
# rule 2: tests whose pytest.warns(FutureWarning) becomes "no FutureWarning"
NOT_DEPRECATED = ("test_public_entropy_deprecation",)
# rule 3
ARRAY_API_TESTS = ("test_entropy_array_api",)


@contextmanager
def _not_deprecated():
    """What ``pytest.warns(FutureWarning)`` becomes under rule 2."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    deprecations = [w for w in caught if issubclass(w.category, FutureWarning)]
    assert not deprecations, [str(w.message) for w in deprecations]


def _in_rebound_package(module: str) -> bool:
    return module == REBOUND_PACKAGE or module.startswith(REBOUND_PACKAGE + ".")


class _Rebind(ast.NodeTransformer):
    """Applies the rebinding of imports and rules 1 and 2; records where each applied."""

    def __init__(self):
        self.function = None
        self.reworded: list[tuple[str, str]] = []  # (test, sklearn's pattern)
        self.undeprecated: list[str] = []
        self.rebound: set[str] = set()

    def visit_FunctionDef(self, node):
        self.function = node.name
        self.generic_visit(node)
        self.function = None
        return node

    def visit_Import(self, node):
        self._refuse_module_import([alias.name for alias in node.names])
        return node

    def _refuse_module_import(self, modules):
        """``import sklearn.metrics`` or ``from sklearn import metrics`` would reach
        scikit-learn's functions by attribute, past the rebinding: stop there."""
        reached = [m for m in modules if _in_rebound_package(m)]
        if reached:
            raise LookupError(
                f"{SKLEARN_TESTS} imports the module(s) {reached}, whose functions cannot "
                "be rebound name by name; extend tests/services/test_sklearn_contract.py"
            )

    def visit_ImportFrom(self, node):
        if not _in_rebound_package(node.module or ""):
            self._refuse_module_import([f"{node.module}.{alias.name}" for alias in node.names])
            return node
        missing = [alias.name for alias in node.names if alias.name not in OURS]
        if missing:
            raise LookupError(
                f"{SKLEARN_TESTS} imports {missing} from {node.module}; add our "
                "equivalents to OURS in tests/services/test_sklearn_contract.py"
            )
        self.rebound |= {alias.name for alias in node.names}
        return [
            ast.copy_location(
                ast.Assign(
                    targets=[ast.Name(alias.asname or alias.name, ast.Store())],
                    value=ast.Subscript(
                        ast.Name("__ours__", ast.Load()), ast.Constant(alias.name), ast.Load()
                    ),
                ),
                node,
            )
            for alias in node.names
        ]

    def visit_Constant(self, node):
        if isinstance(node.value, str) and node.value in OUR_WORDING:
            self.reworded.append((self.function, node.value))
            return ast.copy_location(ast.Constant(OUR_WORDING[node.value][0]), node)
        return node

    def visit_Call(self, node):
        self.generic_visit(node)
        func = node.func
        is_warns = (
            isinstance(func, ast.Attribute)
            and func.attr == "warns"
            and isinstance(func.value, ast.Name)
            and func.value.id == "pytest"
        )
        if (
            is_warns
            and self.function in NOT_DEPRECATED
            and node.args
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id == "FutureWarning"
        ):
            self.undeprecated.append(self.function)
            return ast.copy_location(
                ast.Call(ast.Name("__not_deprecated__", ast.Load()), [], []), node
            )
        return node


def load_sklearn_tests() -> tuple[types.ModuleType, _Rebind]:
    """scikit-learn's test module, executed with our functions bound to its names."""
    tree = ast.parse(SKLEARN_TESTS.read_text(), filename=str(SKLEARN_TESTS))
    rebind = _Rebind()
    tree = ast.fix_missing_locations(rebind.visit(tree))
    module = types.ModuleType("sklearn_test_supervised_on_ours")
    module.__file__ = str(SKLEARN_TESTS)
    module.__dict__.update(__ours__=OURS, __not_deprecated__=_not_deprecated)
    exec(compile(tree, str(SKLEARN_TESTS), "exec"), module.__dict__)
    return module, rebind


def sklearn_test_names() -> list[str]:
    """The test functions scikit-learn's module defines, read from its source alone."""
    tree = ast.parse(SKLEARN_TESTS.read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]


SKLEARN_MODULE, REBIND = load_sklearn_tests()
SKLEARN_TEST_NAMES = sklearn_test_names()
for _name in SKLEARN_TEST_NAMES:
    assert _name not in globals(), f"{_name} would hide a test of this module"
    globals()[_name] = getattr(SKLEARN_MODULE, _name)
del _name


@pytest.fixture(autouse=True)
def array_api_environment(request, monkeypatch):
    """Rule 3: scikit-learn's array-API test runs here where its namespace and device do."""
    if request.node.originalname not in ARRAY_API_TESTS:
        return
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    params = request.node.callspec.params
    if params["array_namespace"] == "torch" and params["device_name"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA device on this machine")


# -- the harness itself -------------------------------------------------------------
def test_every_sklearn_test_runs_here_on_our_functions():
    assert len(SKLEARN_TEST_NAMES) > 20  # the module was found and parsed
    for name in SKLEARN_TEST_NAMES:
        test = globals()[name]
        assert test.__code__.co_filename == str(SKLEARN_TESTS)
        assert test.__globals__ is SKLEARN_MODULE.__dict__
    for name in REBIND.rebound:
        assert SKLEARN_MODULE.__dict__[name] is OURS[name]
    # the parametrizations (score_funcs in 1.9) were built from our functions
    for name in SKLEARN_TEST_NAMES:
        for mark in getattr(globals()[name], "pytestmark", []):
            for value in mark.args[1] if mark.name == "parametrize" else []:
                assert not getattr(value, "__module__", "").startswith("sklearn."), (name, value)


def test_each_adaptation_still_applies():
    reworded = sorted(set(REBIND.reworded))
    assert reworded == sorted((test, pattern) for pattern, (_, test) in OUR_WORDING.items())
    assert REBIND.undeprecated == list(NOT_DEPRECATED)
    assert set(ARRAY_API_TESTS) <= set(SKLEARN_TEST_NAMES)


@pytest.mark.parametrize(
    "source",
    [
        "from sklearn.metrics.cluster import silhouette_score",  # a name OURS lacks
        "import sklearn.metrics.cluster",
        "from sklearn import metrics",
    ],
)
def test_an_import_that_cannot_be_rebound_stops_the_load(source):
    with pytest.raises(LookupError):
        _Rebind().visit(ast.parse(source))


def test_rebinding_changes_what_the_tests_see():
    # a wrong function under a rebound name must fail scikit-learn's test
    swapped = dict(SKLEARN_MODULE.__dict__, adjusted_rand_score=clustering.rand_score)
    broken = types.FunctionType(SKLEARN_MODULE.test_non_consecutive_labels.__code__, swapped)
    with pytest.raises(AssertionError):
        broken()


# -- what scikit-learn's tests leave out: signatures, parity on random labelings, bad input --
PUBLIC = sorted(name for name in OURS if hasattr(skc, name) and not name.startswith("_"))


@pytest.mark.parametrize("name", PUBLIC)
def test_signature_is_sklearns(name):
    def parameters(function):
        return [
            (p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()
        ]

    assert parameters(OURS[name]) == parameters(getattr(skc, name))


# -- what scikit-learn's tests leave out: parity on random labelings, and bad input ---------
def _random_labelings(seed: int, n: int = 700):
    rng = np.random.RandomState(seed)
    a = rng.randint(int(rng.randint(2, 40)), size=n)
    return a, np.where(rng.rand(n) < 0.5, a, rng.randint(int(rng.randint(2, 60)), size=n))


@pytest.mark.parametrize("seed", range(4))
def test_new_signatures_match_sklearn_on_random_labelings(seed):
    a, b = _random_labelings(seed)
    np.testing.assert_array_equal(
        clustering.pair_confusion_matrix(a, b), skc.pair_confusion_matrix(a, b)
    )
    assert clustering.rand_score(a, b) == pytest.approx(skc.rand_score(a, b), abs=1e-15)
    theirs = skc.contingency_matrix(a, b, sparse=True)
    ours = clustering.contingency_matrix(a, b, sparse=True)
    assert type(ours) is type(theirs)
    np.testing.assert_array_equal(ours.toarray(), theirs.toarray())
    np.testing.assert_array_equal(
        clustering.contingency_matrix(a, b, eps=0.5, dtype=np.int32),
        skc.contingency_matrix(a, b, eps=0.5, dtype=np.int32),
    )
    for table in (theirs, theirs.toarray(), theirs.tocsc(), sp.coo_array(theirs)):
        mi = clustering.mutual_info_score(None, None, contingency=table)
        assert mi == pytest.approx(skc.mutual_info_score(a, b), abs=1e-13)
        emi = clustering.expected_mutual_information(table, len(a))
        assert emi == pytest.approx(skc.expected_mutual_information(theirs, len(a)), abs=1e-12)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: clustering.mutual_info_score(None, None, contingency=[[1.5, 2]]), "non-integer"),
        (lambda: clustering.mutual_info_score(None, None, contingency=[[1, -2]]), "negative"),
        (lambda: clustering.mutual_info_score(None, None, contingency=[1, 2]), "2-d table"),
        (lambda: clustering.expected_mutual_information([[1, 2], [3, 4]], 9), "counts 10"),
        (lambda: clustering.contingency_matrix([0, 1], [0, 1], eps=-1.0), "eps=-1.0"),
        (lambda: clustering.v_measure_score([0, 1], [0, 1], beta=-0.5), "beta=-0.5"),
        (lambda: clustering.adjusted_mutual_info_score([0], [0], average_method="x"), "one of"),
    ],
)
def test_bad_arguments_get_one_sentence(call, message):
    with pytest.raises(ValueError, match=message):
        call()
