"""The run-folder guards under the import path `privimage.pipeline` uses; they are defined in `privimage.run_folder`."""

from privimage.run_folder import check_release_location, read_json_mapping

__all__ = ["check_release_location", "read_json_mapping"]
