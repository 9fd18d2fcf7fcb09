"""What every kernel shares: a self-describing :class:`Packed` weight and the :class:`Kernel` API.

A kernel module only has to say how to lay the ternary weights out (``_pack``) and how to run
its Numba loop (``_run``); input checks, GEMV/GEMM shapes and the fused float rescale live here.
A kernel may also override what the model engine calls on its hot path (``linear_fast``,
``linear_1``), the inverse of its layout (``unpack``) and ``random_packed``; the defaults here
are generic and exact.  :class:`I2SKernel` is the shared base of the I2_S layouts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..packing import I2S_BLOCK, check_ternary, pack_i2s, unpack_i2s


@dataclass(frozen=True)
class Packed:
    """Ternary weights ``[out, k]`` stored in one kernel's layout.

    ``arrays`` holds the layout's numpy arrays (codes, indices, sign bits...); ``out`` and ``k``
    are the shape of the original matrix, so the object can be kept in memory and measured.

    Immutable and checked: the kernels' Numba loops index the arrays by ``out`` and ``k``
    without bounds checks, so construction (also ``dataclasses.replace``) refuses arrays whose
    shapes and dtypes are not exactly what that kernel's layout has for ``[out, k]``
    (:meth:`Kernel.expected_arrays`), and keeps read-only views of them.
    """

    kernel: str
    out: int
    k: int
    arrays: tuple

    def __post_init__(self):
        if not isinstance(self.kernel, str):
            raise ValueError(f"Packed.kernel must be a kernel name, got {self.kernel!r}")
        for name in ("out", "k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Packed.{name} must be a whole number >= 1, got {v!r}")
            object.__setattr__(self, name, int(v))
        if not isinstance(self.arrays, (tuple, list)) or not all(
                isinstance(a, np.ndarray) for a in self.arrays):
            raise ValueError("Packed.arrays must be a tuple of numpy arrays")
        views = []
        for a in self.arrays:
            v = a.view()
            v.flags.writeable = False  # the packed weights are never written after packing
            views.append(v)
        object.__setattr__(self, "arrays", tuple(views))
        layout = _LAYOUTS.get(self.kernel)
        if layout is not None:
            layout.check_arrays(self)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out, self.k)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays))

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.out * self.k)


#: kernel name -> its Kernel class, for Packed's construction check (filled by subclasses)
_LAYOUTS: dict[str, type] = {}


class Kernel:
    """Base class: ``pack(w)`` then ``matmul(packed, x)`` == ``x.astype(int32) @ w.T``.

    Subclasses set ``name``/``summary`` and implement ``_pack(w) -> tuple of arrays`` and
    ``_run(arrays, x, y, scale)``: ``x`` int8 ``[T, k]`` (C-contiguous), ``y`` the output
    ``[T, out]`` to fill, ``scale`` None (store the int32 sums) or float32 ``[T]`` (store
    ``sum * scale[t]`` into a float32 ``y``).
    """

    name = "?"
    summary = ""
    fast_gemm = False  # True if many tokens take a blocked path (not T passes of the GEMV loop)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:
            _LAYOUTS[cls.name] = cls

    def __repr__(self) -> str:
        return f"<kernel {self.name!r}: {self.summary}>"

    # -- public API ---------------------------------------------------------------------------
    def pack(self, w) -> Packed:
        """Pack a ternary matrix ``w`` (int8 ``[out, in]`` of -1/0/+1) into this layout."""
        w = check_ternary(w, "w")
        if w.ndim != 2:
            raise ValueError(f"w must be a matrix [out, in], got shape {w.shape}")
        arrays = tuple(np.ascontiguousarray(a) for a in self._pack(w))
        return Packed(self.name, int(w.shape[0]), int(w.shape[1]), arrays)

    def unpack(self, packed: Packed) -> np.ndarray:
        """The inverse of :meth:`pack`: int8 ``[out, in]`` of -1/0/+1, exactly the packed ``w``.

        Generic version: the product with the identity matrix, 256 columns at a time (any
        layout :meth:`matmul` runs); kernels override it with a direct decode of their layout.
        """
        self._check_packed(packed)
        eye = np.eye(packed.k, dtype=np.int8)
        cols = [self.matmul(packed, eye[j:j + 256]) for j in range(0, packed.k, 256)]
        return np.ascontiguousarray(np.concatenate(cols).T.astype(np.int8))

    def matmul(self, packed: Packed, x) -> np.ndarray:
        """Exact integer product: x int8 ``[in]`` -> int32 ``[out]``; ``[T, in]`` ->
        ``[T, out]``."""
        x2, squeeze = self._check(packed, x)
        y = np.empty((x2.shape[0], packed.out), np.int32)
        self._run(packed.arrays, x2, y, None)
        return y[0] if squeeze else y

    def linear(self, packed: Packed, x, x_scale, w_scale: float) -> np.ndarray:
        """Fused BitLinear: ``(x @ w.T) * x_scale[t] * w_scale`` as float32, one Numba call.

        ``x_scale`` is the per-token dequantization scale of :func:`bitnet_edu.quant.absmax_int8`
        (``x ≈ xq * x_scale``), shape ``[T]``, ``[T, 1]`` or a single value; ``w_scale`` the
        absmean weight scale.  Same shapes as :meth:`matmul`, float32 result.
        """
        x2, squeeze = self._check(packed, x)
        t = x2.shape[0]
        s = np.asarray(x_scale, np.float32).reshape(-1)
        if s.size not in (1, t):
            raise ValueError(f"x_scale must have 1 or T={t} values, got shape {np.shape(x_scale)}")
        s = np.ascontiguousarray(np.broadcast_to(s * np.float32(w_scale), (t,)), np.float32)
        y = np.empty((t, packed.out), np.float32)
        self._run(packed.arrays, x2, y, s)
        return y[0] if squeeze else y

    # -- the model engine's paths: no input checks, same float32 bits as linear -----------------
    def linear_fast(self, packed: Packed, xq: np.ndarray, x_scale: np.ndarray,
                    w_scale: float) -> np.ndarray:
        """:meth:`linear` for inputs known to be right: ``xq`` int8 ``[T, in]`` C-contiguous,
        ``x_scale`` float32 ``[T]``, ``w_scale`` a float -> float32 ``[T, out]``, bit for bit
        what :meth:`linear` returns.  A kernel overrides it to skip the generic checks and
        NumPy preparation; this default is :meth:`linear` itself."""
        return self.linear(packed, xq, x_scale, w_scale)

    def linear_1(self, packed: Packed, xq: np.ndarray, x_scale: np.ndarray,
                 w_scale: float) -> np.ndarray:
        """One token (decode): ``xq`` int8 ``[1, in]`` C-contiguous, ``x_scale`` float32 ``[1]``
        -> float32 ``[1, out]``, bit for bit what :meth:`linear` returns.  Default:
        :meth:`linear_fast`."""
        return self.linear_fast(packed, xq, x_scale, w_scale)

    def random_packed(self, rng: np.random.Generator, out: int, cols: int) -> Packed:
        """Random ternary weights ``[out, cols]`` (each of -1/0/+1 with probability ~1/3) in
        this layout, for speed and memory lessons.  Default: :meth:`pack` of a random int8
        matrix; layouts that allow it draw their bytes directly (no ``[out, cols]`` matrix)."""
        return self.pack(rng.integers(-1, 2, size=(out, cols), dtype=np.int8))

    # -- checks ---------------------------------------------------------------------------------
    @classmethod
    def expected_arrays(cls, out: int, k: int) -> tuple | None:
        """The layout's arrays for a ``[out, k]`` matrix: a tuple of ``(shape, dtype)``, one per
        array, or None when a kernel does not say (then only the generic checks apply).  The
        kernels' loops read exactly these extents, so anything else would read out of bounds."""
        return None

    @classmethod
    def check_arrays(cls, packed: "Packed") -> None:
        """ValueError unless ``packed.arrays`` are C-contiguous with exactly the shapes and
        dtypes :meth:`expected_arrays` gives for ``packed.out, packed.k``."""
        want = cls.expected_arrays(packed.out, packed.k)
        if want is None:
            return
        got = packed.arrays
        if len(got) != len(want) or any(
                a.shape != tuple(s) or a.dtype != d or not a.flags.c_contiguous
                for a, (s, d) in zip(got, want)):
            raise ValueError(
                f"Packed metadata does not match its arrays: kernel {packed.kernel!r} stores a "
                f"[{packed.out}, {packed.k}] matrix as "
                f"{[(tuple(s), np.dtype(d).name) for s, d in want]} (C-contiguous), got "
                f"{[(a.shape, a.dtype.name) for a in got]}; build it with "
                f"kernels.get({packed.kernel!r}).pack(w)")

    def check_packed(self, packed) -> "Packed":
        """``packed`` if it is a :class:`Packed` of this kernel whose arrays fit its ``out``
        and ``k`` (a few comparisons: run on every checked call), else ValueError."""
        if not isinstance(packed, Packed):
            raise ValueError(f"packed must come from kernels.get({self.name!r}).pack(w), "
                             f"got {type(packed).__name__}")
        if packed.kernel != self.name:
            raise ValueError(f"weights were packed by kernel {packed.kernel!r}, "
                             f"not {self.name!r}: use the same kernel for pack and matmul")
        self.check_arrays(packed)  # again: an array's shape can be set in place
        return packed

    _check_packed = check_packed  # the name the kernel modules use

    def _check(self, packed, x):
        self._check_packed(packed)
        x = np.asarray(x)
        if x.dtype != np.int8:
            raise ValueError(f"x must be int8 (quantize with absmax_int8), got dtype {x.dtype}")
        if x.ndim not in (1, 2):
            raise ValueError(f"x must be [in] or [T, in], got shape {x.shape}")
        if x.shape[-1] != packed.k:
            raise ValueError(f"x has {x.shape[-1]} features but the weights expect in={packed.k} "
                             f"(w shape {packed.shape}, x shape {x.shape})")
        squeeze = x.ndim == 1
        x2 = np.ascontiguousarray(x.reshape(1, -1) if squeeze else x)
        if x2.shape[0] == 0:
            raise ValueError("x has no tokens (T = 0)")
        return x2, squeeze

    # -- to implement ---------------------------------------------------------------------------
    def _pack(self, w: np.ndarray) -> tuple:
        raise NotImplementedError

    def _run(self, arrays: tuple, x: np.ndarray, y: np.ndarray, scale) -> None:
        raise NotImplementedError


def pad_cols(a: np.ndarray, multiple: int) -> np.ndarray:
    """Zero-pad the last axis of ``a`` up to a multiple of ``multiple`` (zero weights/activations
    add nothing to a dot product, so padding keeps results exact)."""
    pad = (-a.shape[-1]) % multiple
    if pad == 0:
        return a
    widths = [(0, 0)] * (a.ndim - 1) + [(0, pad)]
    return np.pad(a, widths)


# A byte of four 2-bit codes c = w + 1 is valid when no code is 3: 3**4 = 81 such bytes.  Random
# bytes mapped onto them give random ternary weights (13 of the 81 come 4 times in 256, the
# others 3 times: a bias that does not matter for speed and memory lessons).
_VALID = np.array([b for b in range(256) if all((b >> s) & 3 != 3 for s in (0, 2, 4, 6))],
                  np.uint8)
_CODE_BYTE = _VALID[np.arange(256) % 81]


class I2SKernel(Kernel):
    """A layout of one uint8 array ``[out, kp/4]``: the I2_S bytes of
    :func:`bitnet_edu.packing.pack_i2s` (codes ``c = w + 1``, four per byte) of each row,
    zero-padded to ``kp``, a multiple of :attr:`block` weights."""

    block = I2S_BLOCK

    @classmethod
    def expected_arrays(cls, out, k):
        """Codes uint8 ``[out, kp/4]``, ``kp`` = ``k`` rounded up to :attr:`block`."""
        return (((out, -(-k // cls.block) * cls.block // 4), np.uint8),)

    def _pack(self, w):
        wp = pad_cols(w, self.block)  # zero weights in the padding: exact
        return (pack_i2s(wp).reshape(w.shape[0], -1),)

    def unpack(self, packed: Packed) -> np.ndarray:
        """The inverse of :meth:`pack` by decoding the codes: int8 ``[out, in]``."""
        codes = self._check_packed(packed).arrays[0]
        w = unpack_i2s(codes.reshape(-1), (packed.out, codes.shape[1] * 4))
        return np.ascontiguousarray(w[:, :packed.k])

    def random_packed(self, rng: np.random.Generator, out: int, cols: int) -> Packed:
        """Random ternary ``[out, cols]`` drawn as code bytes when ``cols`` is a multiple of
        :attr:`block` (no padding): 2 B weights stay 0.5 GB the whole time.  Other widths
        go through :meth:`pack`."""
        if cols % self.block:
            return super().random_packed(rng, out, cols)
        raw = np.frombuffer(rng.bytes(out * cols // 4), np.uint8).reshape(out, cols // 4)
        return Packed(self.name, out, cols, (np.take(_CODE_BYTE, raw),))
