"""Maps the repository's top-level folders onto one import namespace.

export/, deploy/ and targets/ live beside bimatting/ (the layout users asked for) but install as
bimatting.export, bimatting.deploy and bimatting.targets. Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

ROOTS = {
    "bimatting": "bimatting",
    "bimatting.export": "export",
    "bimatting.deploy": "deploy",
    "bimatting.targets": "targets",
}

packages, package_dir = [], {}
for package, folder in ROOTS.items():
    package_dir[package] = folder
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir)
