"""The disposable test host: a Debian 12 container booted with systemd-nspawn (testhost/testhost).

Only what differs from the real server is here. It has no NVIDIA GPU, so the GPU layer is skipped and
GPU-only units are installed but skipped by systemd; /models is a plain directory.
"""

gpu_present = False

# No model hub here: each llama.cpp model file is the real SmolLM2-135M GGUF (artifacts.smollm2-gguf),
# placed at the production file's path. The llama.cpp source is the pinned archive (no GitHub here).
use_model_standins = True
llama_cpp_source = "archive"

# The CPU and 2 cores of a CI machine: a small context, no GPU layers.
llama_server_overrides = {
    "ctx_size": 2048,
    "n_gpu_layers": "0",
    "flash_attn": "off",
    "batch_size": 512,
    "ubatch_size": 512,
}

# The HyperCLOVA X plugin's repository cannot be reached from here and no archive of it exists in the
# registries: the vLLM layer installs vLLM and stops before the plugin, saying so once.
vllm_plugin_source = "unavailable"
