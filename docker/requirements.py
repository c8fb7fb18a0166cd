"""Print pyproject.toml's dependencies (and those of the extras named), one per line: the images
install them in a layer of their own, so a change to the code alone reinstalls only the package.

    python3 docker/requirements.py [EXTRA ...] > requirements.txt
"""

import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
reqs = list(project["dependencies"])
for extra in sys.argv[1:]:
    reqs += project["optional-dependencies"][extra]
print("\n".join(reqs))
