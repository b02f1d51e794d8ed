"""requirements.py PYPROJECT [plugin|build]: print the pins the image installs, one a line, from
pyproject.toml (the one list of versions): the dependencies and the `cuda` and `cloud` extras (s3://, gs:// datasets), or with `plugin`
DALI's TF plugin, which is built against the installed TensorFlow, or with `build` what building
the package needs (setup.py compiles the native reader). The image's build and its test
(tests/test_docker_and_cli.py) both use this."""
import sys
import tomllib

pyproject = tomllib.load(open(sys.argv[1], "rb"))
project = pyproject["project"]
extras = project["optional-dependencies"]
lists = {"plugin": extras["tf-plugin"], "build": pyproject["build-system"]["requires"]}
print("\n".join(lists[sys.argv[2]] if sys.argv[2:] else project["dependencies"] + extras["cuda"] + extras["cloud"]))
