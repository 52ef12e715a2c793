"""Print what torch sees of the GPUs, as one JSON object (for bench/gpu_validate.py).

    python bench/gpu_jobs/torch_info.py

gpu_validate runs this in a subprocess so that its own process never creates a CUDA context (which
exq would count as another user's memory on the GPU). CUDA_DEVICE_ORDER=PCI_BUS_ID is set before
torch initialises CUDA, so torch numbers the GPUs in NVML's order. Output:
`{"torch", "cuda", "available", "devices": [{"index", "name", "total_memory", "uuid"}]}`.
"""

from __future__ import annotations

import json
import os
import warnings

os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without numpy is fine here

import torch  # noqa: E402


def main() -> None:
    available = torch.cuda.is_available()
    devices = []
    for index in range(torch.cuda.device_count() if available else 0):
        props = torch.cuda.get_device_properties(index)
        uuid = getattr(props, "uuid", None)  # torch >= 2.0
        devices.append({"index": index, "name": props.name, "total_memory": int(props.total_memory),
                        "uuid": str(uuid) if uuid is not None else None})
    print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "available": available,
                      "devices": devices}))


if __name__ == "__main__":
    main()
