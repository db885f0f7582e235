"""DataJoint's own ``tests/schema_simple.py`` (from its sdist: ``DJO_DATAJOINT_TESTS`` is
that tests/ directory), declared in schema ``DJO_TEST_SCHEMA`` as DataJoint's own
conftest declares it (``schema_simp``): a pipeline nobody here wrote."""

import os
import sys

import datajoint as dj

sys.path.insert(0, os.environ["DJO_DATAJOINT_TESTS"])
import schema_simple  # noqa: E402
from schema_simple import *  # noqa: E402,F401,F403

schema = dj.Schema(os.environ["DJO_TEST_SCHEMA"], schema_simple.LOCALS_SIMPLE)
for _cls in (schema_simple.SelectPK, schema_simple.KeyPK, schema_simple.IJ, schema_simple.JI, schema_simple.A,
             schema_simple.B, schema_simple.L, schema_simple.D, schema_simple.E, schema_simple.F, schema_simple.G,
             schema_simple.DataA, schema_simple.DataB, schema_simple.Website, schema_simple.Profile,
             schema_simple.TTestUpdate, schema_simple.ArgmaxTest, schema_simple.ReservedWord, schema_simple.OutfitLaunch):
    schema(_cls)
