"""Entry script run by the img2dataset interpreter (a real file: multiprocessing spawn needs one).

    <img2dataset-python> img2dataset_runner.py spec.json

spec.json holds img2dataset.download keyword arguments plus a ``_cerebro`` section.
"""

import json
import sys


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    extra = spec.pop("_cerebro", {})
    from cerebro_core.data import img2dataset_hooks

    img2dataset_hooks.install(max_image_pixels=int(extra.get("max_image_pixels", 89_478_485)))
    from img2dataset import download

    download(**spec)


if __name__ == "__main__":
    main()
