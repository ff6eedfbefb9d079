"""What a device takes beside a model's own tensors (light: no torch; the planning side reads it).

Every trial on a GPU runs in its own process, whose CUDA context (driver, cuBLAS, cuDNN, kernels)
sits beside PyTorch's pool: outside `max_memory_allocated`, but paid by every trial. Measured with
torch 2.11 + CUDA 13 on an H200: nvidia-smi's process memory after a matmul, a conv backward and
SDPA in bf16 (750 MiB), minus PyTorch's reserved pool (56 MiB).
"""

CUDA_CONTEXT_BYTES = 694 * 2**20
