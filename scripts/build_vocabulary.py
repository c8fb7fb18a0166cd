"""Build the shipped wildlife vocabulary (configs/vocab/wildlife.txt) from the name lists in
../shared/data/species_names (names are facts; see that folder's SOURCE.txt):

- the Zamba camera-trap classes (African + European), compound labels as alternatives
  ("antelope_duiker" → "antelope or duiker"), without "blank" (an empty frame is no species);
- the common names of the IUCN Red-List land and freshwater vertebrates of the 400-species list
  (mammals, birds, reptiles, amphibians).

iNat21's 9,551 names are left out: the list has no taxonomy to tell animals from plants and fungi.

    python scripts/build_vocabulary.py [../shared/data/species_names] [configs/vocab/wildlife.txt]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALTERNATIVES = {"antelope_duiker", "chimpanzee_bonobo", "civet_genet", "hare_rabbit", "monkey_prosimian",
                "wild_dog_jackal"}
VERTEBRATES = ("Mammalia", "Aves", "Reptilia", "Amphibia")


def camera_trap_name(label: str) -> str:
    if label in ALTERNATIVES:
        return " or ".join(label.split("_", 1)).replace("_", " ")
    return label.replace("_", " ")


def build(names_dir: Path) -> list[str]:
    out: list[str] = []
    for f in ("zamba_african_camera_trap_labels.txt", "zamba_european_camera_trap_labels.txt"):
        out += [camera_trap_name(x.strip()) for x in (names_dir / f).read_text().splitlines()
                if x.strip() and x.strip() != "blank"]
    with (names_dir / "iucn_rare_species_400.csv").open(newline="") as fh:
        out += [r["common_name"].strip().lower() for r in csv.DictReader(fh)
                if r["class"] in VERTEBRATES and r["common_name"].strip()]
    return list(dict.fromkeys(" ".join(n.split()) for n in out))


def main() -> None:
    names_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data" / "species_names"
    dest = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "configs" / "vocab" / "wildlife.txt"
    names = build(names_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(names) + "\n")
    print(f"{len(names)} names → {dest}")


if __name__ == "__main__":
    main()
