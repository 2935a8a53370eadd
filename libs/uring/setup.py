"""The C extension; everything else is in pyproject.toml. optional=True: a failed compile (no gcc,
no Python.h, not Linux) leaves a package whose available() says why, instead of a failed install."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "roomcast.uring._uring",
            sources=["src/roomcast/uring/_uring.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
