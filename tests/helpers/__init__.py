"""Set-up shared by the test modules, as plain functions (fixtures live in conftest.py, and no
test imports another test module or conftest): where the tests run (:mod:`.env`), real servers
and processes (:mod:`.servers`), test data (:mod:`.data`), models and stages (:mod:`.models`)."""

from helpers.data import (BAD_KINDS, CLASSES, clustered, good_pairs, make_scrape, make_video, png_bomb, shardset_for,
                          split, write_pair_shards, write_url_list)
from helpers.env import CEREBRO, REPO, SHARED, VENV_BIN, require_shared, seed_prefect_home, state_dir
from helpers.models import (TINY, dist, indexed_caltech, indexed_home, kill_after_first_checkpoint, latest_adapt,
                            pool_probs, register_random_clip, written_labels)
from helpers.servers import LoopbackServer, chromium, free_port, stop, wait_port

__all__ = ["BAD_KINDS", "CEREBRO", "CLASSES", "LoopbackServer", "REPO", "SHARED", "TINY", "VENV_BIN", "chromium",
           "clustered", "dist", "free_port", "good_pairs", "indexed_caltech", "indexed_home",
           "kill_after_first_checkpoint", "latest_adapt", "make_scrape", "make_video", "png_bomb", "pool_probs",
           "register_random_clip", "require_shared", "seed_prefect_home", "shardset_for", "split", "state_dir", "stop",
           "wait_port", "write_pair_shards", "write_url_list", "written_labels"]
