"""Build hook: ship the repository's task cards, AGV layouts and behaviour actors inside the wheel.

They live at the repository root, where they are edited (``envs/``, ``datasets/behavior/``); a
non-editable build copies them into ``fastpolicy/_data/`` so an installed package finds them without
a checkout (``fastpolicy.resources``). An editable install reads them in place. Everything else is
configured in setup.cfg.
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
#: source folder (repository-relative) → folder inside the built package, and the files it ships
PACKAGE_DATA_DIRS = {
    "envs": ("fastpolicy/_data/envs", (".yaml",)),
    "datasets/behavior": ("fastpolicy/_data/behavior", (".safetensors", ".json", ".md")),
}


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads envs/ and datasets/behavior/ in place
        for src, (dst, suffixes) in PACKAGE_DATA_DIRS.items():
            src_dir = os.path.join(HERE, src)
            if not os.path.isdir(src_dir):
                raise FileNotFoundError(f"{src_dir} is missing: the package would ship without it")
            for root, _, files in os.walk(src_dir):
                for name in sorted(files):
                    if not name.endswith(suffixes):
                        continue
                    rel = os.path.relpath(os.path.join(root, name), src_dir)
                    target = os.path.join(self.build_lib, dst, rel)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copyfile(os.path.join(root, name), target)


setup(cmdclass={"build_py": BuildWithData})
