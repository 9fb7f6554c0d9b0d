"""Build the Cython extension modules of raftkv_ext.

Metadata lives in pyproject.toml; this file only declares the compiled modules, which
setuptools cannot express declaratively.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

EXTENSIONS = [
    Extension(
        f"raftkv_ext.{name}",
        [f"raftkv_ext/{name}.pyx"],
        extra_compile_args=["-O2"],
    )
    for name in ("entry", "codec", "segment_log")
]

setup(
    ext_modules=cythonize(
        EXTENSIONS,
        language_level="3",
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
)
