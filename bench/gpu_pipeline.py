"""The GPU pipeline of bench/gpu_dask.py: ``Signal`` (manual) -> ``Spectrum`` (a GPU table,
its make an FFT on the GPU, recording the device and ``CUDA_VISIBLE_DEVICES``) -> ``Peak``
(a CPU table). The schema is ``DJO_GPU_SCHEMA``."""

import os
import numpy as np
import datajoint as dj

schema = dj.Schema(os.environ["DJO_GPU_SCHEMA"])


def gpu_fft(x):
    """|FFT| on the GPU: PyTorch if present, else CuPy. Returns (magnitudes, device name)."""
    try:
        import torch
        t = torch.as_tensor(x, device="cuda")
        return torch.fft.rfft(t).abs().cpu().numpy(), torch.cuda.get_device_name(t.device)
    except ImportError:
        import cupy
        return cupy.asnumpy(cupy.abs(cupy.fft.rfft(cupy.asarray(x)))), cupy.cuda.runtime.getDeviceProperties(
            cupy.cuda.Device().id)["name"].decode()


@schema
class Signal(dj.Manual):
    definition = """
    signal_id : int32
    ---
    samples   : <blob>
    """


@schema
class Spectrum(dj.Computed):
    definition = """
    -> Signal
    ---
    magnitude : <blob>
    device    : varchar(255)
    cuda      : varchar(64)   # CUDA_VISIBLE_DEVICES the make saw
    """

    dask = {"resources": {"GPU": 1}}

    def make(self, key):
        x = (Signal & key).fetch1("samples")
        magnitude, device = gpu_fft(x)
        self.insert1({**key, "magnitude": magnitude, "device": device,
                      "cuda": os.environ.get("CUDA_VISIBLE_DEVICES", "")})


@schema
class Peak(dj.Computed):
    definition = """
    -> Spectrum
    ---
    peak_bin : int32
    """

    def make(self, key):
        self.insert1({**key, "peak_bin": int(np.argmax((Spectrum & key).fetch1("magnitude")))})
