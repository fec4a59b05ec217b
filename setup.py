from setuptools import find_packages, setup

setup(
    name="minivit",
    version="0.2.0",
    description="A Vision Transformer in plain NumPy (CuPy optional) with hand-written backward passes",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["minivit", "minivit.*"]),
    python_requires=">=3.9",
    install_requires=["numpy>=1.22", "tqdm>=4.60"],
    extras_require={
        "test": ["pytest>=7"],
        "gpu": ["cupy-cuda12x"],
        "gpu-cuda13": ["cupy-cuda13x"],
        "torch": ["torch==2.13.0"],
        "plot": ["matplotlib>=3.5"],
        "images": ["pillow>=9"],
        "fast-erf": ["scipy>=1.8"],
        "mpi": ["mpi4py>=3.1", "mpich"],
        "hub": ["safetensors>=0.4"],
        "onnx": ["onnxruntime>=1.17", "onnx>=1.16", "onnxscript>=0.6.2", "torch==2.13.0"],
        "fuzz": ["atheris>=2.3"],                # coverage-guided fuzzing of the file parsers
    },
    entry_points={"console_scripts": [
        "minivit-train=minivit.cli.train:entry",
        "minivit-finetune=minivit.cli.finetune:entry",
        "minivit-evaluate=minivit.cli.evaluate:entry",
        "minivit-predict=minivit.cli.predict:entry",
        "minivit-embed=minivit.cli.embed:entry",
        "minivit-io=minivit.cli.io:entry",
        "minivit-attention=minivit.cli.attention:entry",
    ]},
)
