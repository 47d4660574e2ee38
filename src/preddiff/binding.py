"""Running an onnxruntime session on batches with its data on the device (IOBinding).

``session.run(names, feeds)`` copies every input from host memory to the device and every
output back, and allocates both each call. PDA calls a session tens of thousands of times with
inputs of a few fixed shapes, most of which never change during an image (the clean image),
so :class:`BoundSession` binds them once:

- *constants* (:meth:`BoundSession.set_constant`) are copied to the device once and stay
  there until replaced;
- per-call inputs are copied into device buffers allocated once per shape (``update_inplace``);
- outputs are written into device buffers allocated once per shape, and only the outputs asked
  for are copied back to the host.

The same code runs on every execution provider: ``device_type="cpu"`` binds host memory (what
the tests exercise), ``"cuda"`` the GPU's.
"""
from __future__ import annotations

import numpy as np

__all__ = ["BoundSession"]

#: Buffers kept per name: one per distinct batch shape (a run has a full-batch shape and at
#: most a few smaller ones at the end of a block).
MAX_SHAPES = 4
#: ... and per name of a small input (at most :data:`SMALL_BYTES`), whose shape may change from
#: batch to batch (the incremental graph's index terms follow each batch's box sizes).
MAX_SMALL_SHAPES = 64
SMALL_BYTES = 1 << 20


class BoundSession:
    """An onnxruntime ``InferenceSession`` run through IOBinding with reused device buffers.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    device_type : {"cpu", "cuda"}
        Where inputs and outputs live (onnxruntime's device names).
    device_id : int, optional

    Notes
    -----
    Not thread-safe: one call at a time per instance (the buffers are shared between calls).
    """

    def __init__(self, session, device_type: str = "cpu", device_id: int = 0):
        self.session = session
        self.device_type, self.device_id = device_type, int(device_id)
        self._constants: dict = {}
        self._inputs: dict = {}   # (name, shape, dtype) -> OrtValue
        self._outputs: dict = {}  # (name, shape) -> OrtValue
        self._tails: dict = {}    # output name -> (per-row shape, dtype), once known
        self._binding = session.io_binding()

    def _ortvalue(self, shape, dtype):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, self.device_type,
                                                          self.device_id)

    def set_constant(self, name: str, array: np.ndarray) -> None:
        """Copy ``array`` to the device as input ``name`` of every following call."""
        import onnxruntime as ort

        array = np.ascontiguousarray(array)
        self._constants[name] = ort.OrtValue.ortvalue_from_numpy(array, self.device_type,
                                                                  self.device_id)

    def _input(self, name: str, array: np.ndarray):
        array = np.ascontiguousarray(array)
        key = (name, array.shape, array.dtype.str)
        value = self._inputs.get(key)
        if value is None:
            limit = MAX_SMALL_SHAPES if array.nbytes <= SMALL_BYTES else MAX_SHAPES
            if sum(k[0] == name for k in self._inputs) >= limit:
                self._inputs = {k: v for k, v in self._inputs.items() if k[0] != name}
            value = self._inputs[key] = self._ortvalue(array.shape, array.dtype)
        value.update_inplace(array)
        return value

    def _output(self, name: str, rows: int):
        tail = self._tails.get(name)
        if tail is None:
            return None
        key = (name, rows)
        value = self._outputs.get(key)
        if value is None:
            if sum(k[0] == name for k in self._outputs) >= MAX_SHAPES:
                self._outputs = {k: v for k, v in self._outputs.items() if k[0] != name}
            value = self._outputs[key] = self._ortvalue((rows, *tail[0]), tail[1])
        return value

    def run(self, feeds: dict, outputs, rows: int) -> dict:
        """Run the session once.

        Parameters
        ----------
        feeds : dict of str to ndarray
            Per-call inputs (host arrays), copied into the device buffers.
        outputs : sequence of str
            Outputs to compute and copy back.
        rows : int
            The batch size of this call (each output's first dimension).

        Returns
        -------
        dict of str to ndarray
            Host copies of ``outputs`` (never views of the reused buffers).
        """
        io = self._binding
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        for name, value in self._constants.items():
            io.bind_ortvalue_input(name, value)
        for name, array in feeds.items():
            io.bind_ortvalue_input(name, self._input(name, array))
        for name in outputs:
            value = self._output(name, rows)
            if value is None:  # first call: let onnxruntime allocate, learn the shape
                io.bind_output(name, self.device_type, self.device_id)
            else:
                io.bind_ortvalue_output(name, value)
        self.session.run_with_iobinding(io)
        return self._fetch(outputs, io.get_outputs())

    def _fetch(self, outputs, values) -> dict:
        """Host copies of the bound outputs (learning their shapes on the first call)."""
        result = {}
        for name, value in zip(outputs, values):
            array = value.numpy()
            if name not in self._tails:
                self._tails[name] = (array.shape[1:], array.dtype)
            # on the CPU numpy() may view the reused buffer: keep a copy of our own
            result[name] = np.array(array, copy=True) if self.device_type == "cpu" else array
        return result
