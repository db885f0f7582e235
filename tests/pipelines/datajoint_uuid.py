"""DataJoint's own test schema ``tests/schema_uuid.py`` (from the sdist of the installed
DataJoint, found through DJO_DATAJOINT_TESTS: the ``datajoint_tests`` fixture), declared in
the schema DJO_TEST_SCHEMA the way DataJoint's ``tests/conftest.py`` fixture ``schema_uuid``
declares it. ``Item``'s primary key has no attribute from a foreign key (its key_source is
``Topic``): DataJoint can give it no jobs table."""

import importlib.util
import os

import datajoint as dj

_spec = importlib.util.spec_from_file_location(
    "schema_uuid", os.path.join(os.environ["DJO_DATAJOINT_TESTS"], "schema_uuid.py"))
schema_uuid = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(schema_uuid)

schema = dj.Schema(os.environ["DJO_TEST_SCHEMA"], context=schema_uuid.LOCALS_UUID)
Basic = schema(schema_uuid.Basic)
BasicComputed = schema(schema_uuid.BasicComputed)
Topic = schema(schema_uuid.Topic)
Item = schema(schema_uuid.Item)
