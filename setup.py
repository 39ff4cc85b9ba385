"""mpc-jax: Multi-view Pixel Contrast for image forgery localization, in JAX/Flax."""

from setuptools import find_packages, setup

setup(
  name="mpc-jax",
  version="0.1.0",
  description="JAX/Flax reimplementation of MPC (multi-view pixel contrast) for image forgery localization",
  long_description=open("README.md", encoding="utf-8").read()
  if __import__("os").path.exists("README.md")
  else "",
  long_description_content_type="text/markdown",
  python_requires=">=3.10",
  packages=find_packages(include=["mpc_jax", "mpc_jax.*"]),
  package_data={"mpc_jax": ["assets/*"]},
  install_requires=[
    "jax>=0.10,<0.14",
    "flax>=0.12,<0.14",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "grain>=0.2.12",
    "array_record>=0.8,<0.9",  # `mpc-jax prepare` / `arrayrecord:` shards (cp311 and cp312 wheels)
    "msgpack>=1.0",  # the shards' record format
    "ml-collections>=1.0",
    "clu>=0.0.12",
    "absl-py>=2.1",
    "numpy>=1.26",
    "pillow>=10.0",
    "opencv-python-headless>=4.9",
    "albumentations>=2.0,<3",
    "scikit-image>=0.24",
    "safetensors>=0.4",
    "flatbuffers>=24.3",  # jax.export serialization: the forward's stored pieces (compile_cache)
    "tensorboard>=2.16",
    "matplotlib>=3.8",
    "tensorflow-datasets>=4.9.7",
    "importlib_resources>=6.0",  # tfds builds without TensorFlow need it
  ],
  extras_require={
    "test": ["pytest>=8", "pytest-xdist>=3.8", "scikit-learn>=1.4", "ruff>=0.16,<0.17"],
    "torch": ["torch>=2.2"],
  },
  entry_points={"console_scripts": ["mpc-jax=mpc_jax.main:main"]},
)
