"""A restricted unpickler for the Planetoid ``ind.*`` files.

Pickles can run arbitrary code when loaded (``__reduce__`` may name any callable). The Planetoid
files only contain scipy CSR matrices, numpy arrays and a ``collections.defaultdict`` of lists,
so `RestrictedUnpickler` resolves only an explicit allow-list of ``module.name`` globals and
refuses everything else with `UnsafePickleError` before anything is called.

Globals are resolved from a fixed table rather than imported by name, which also maps the
legacy module paths in the files (``numpy.core.multiarray``, ``scipy.sparse.csr``,
``__builtin__``) onto their current homes without touching deprecated modules.
"""

from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
from typing import Any, Callable, Dict, Tuple

import numpy as np
import scipy.sparse as sp


class UnsafePickleError(ValueError):
  """A pickle asked for a global outside the allow-list."""


def _allowed_globals() -> Dict[Tuple[str, str], Callable[[], Any]]:
  """The allow-list: ``(module, name) -> thunk returning the object``."""
  import _codecs
  import numpy._core.multiarray as multiarray

  table: Dict[Tuple[str, str], Callable[[], Any]] = {}
  # numpy arrays, dtypes and the helpers that numpy's pickles call.
  for mod in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
    table[(mod, "ndarray")] = lambda: np.ndarray
    table[(mod, "dtype")] = lambda: np.dtype
  for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    table[(mod, "_reconstruct")] = lambda: multiarray._reconstruct
    table[(mod, "scalar")] = lambda: multiarray.scalar
  # Python 3 writes protocol-2 ``bytes`` as ``_codecs.encode(str, "latin1")``.
  table[("_codecs", "encode")] = lambda: _codecs.encode
  # scipy.sparse matrix/array classes, under old public and new private module paths.
  for fmt in ("csr", "csc", "coo", "lil", "dok", "dia", "bsr"):
    for kind in ("matrix", "array"):
      cls_name = f"{fmt}_{kind}"
      if not hasattr(sp, cls_name):
        continue
      for mod in ("scipy.sparse", f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}",
                  "scipy.sparse._arrays"):
        table[(mod, cls_name)] = (lambda c=cls_name: getattr(sp, c))
  # Builtin containers and scalars.
  for mod in ("__builtin__", "builtins"):
    for name in ("list", "dict", "tuple", "set", "frozenset", "int", "float", "complex",
                 "bool", "str", "bytes", "bytearray"):
      table[(mod, name)] = (lambda nm=name: getattr(builtins, nm))
  table[("collections", "defaultdict")] = lambda: collections.defaultdict
  table[("collections", "OrderedDict")] = lambda: collections.OrderedDict
  return table


class RestrictedUnpickler(pickle.Unpickler):
  """`pickle.Unpickler` that resolves only allow-listed globals (see module docstring).

  Args:
    file: a binary file object.
    source: a name for error messages (usually the file path).
  """

  def __init__(self, file, source: str = "<pickle>"):
    super().__init__(file, encoding="latin1")
    self._source = source
    self._table = _allowed_globals()

  def find_class(self, module: str, name: str):
    thunk = self._table.get((module, name))
    if thunk is None:
      raise UnsafePickleError(
          f"{self._source}: refusing to load global '{module}.{name}' (not in the allow-list "
          "of numpy/scipy.sparse/builtin container types); the file may be malicious or not a "
          "Planetoid data file")
    return thunk()


def loads(data: bytes, source: str = "<bytes>") -> Any:
  """Unpickles ``data`` with `RestrictedUnpickler`; errors name ``source``.

  Raises:
    UnsafePickleError: a global outside the allow-list.
    ValueError: a corrupt or truncated pickle.
  """
  try:
    return RestrictedUnpickler(io.BytesIO(data), source).load()
  except UnsafePickleError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
          KeyError, UnicodeDecodeError, MemoryError, OverflowError) as exc:
    raise ValueError(f"{source}: corrupt or truncated pickle ({type(exc).__name__}: {exc})"
                     ) from exc


def load(path: str | os.PathLike) -> Any:
  """Reads and unpickles the file at ``path`` with `RestrictedUnpickler` (``encoding="latin1"``)."""
  with open(path, "rb") as f:
    data = f.read()
  return loads(data, source=os.fspath(path))
