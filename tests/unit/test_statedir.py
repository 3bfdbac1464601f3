"""Workers started from one checkout each get a state folder of their own."""
import pytest

from streams.statedir import StateDirError, claim


def test_each_claim_gets_its_own_folder_and_a_released_one_is_taken_again(tmp_path):
    # Given two workers started on the same ENGAGE_DATA_DIR
    first, second = claim(tmp_path), claim(tmp_path)
    # Then each has a folder of its own
    assert (first.path.name, second.path.name) == ("worker-0", "worker-1") and first.path.is_dir()
    # When the first stops, then the next worker takes its folder (and the state it left)
    first.release()
    third = claim(tmp_path)
    assert third.path == first.path
    second.release()
    third.release()


def test_a_folder_that_cannot_be_created_is_one_line_naming_the_setting(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StateDirError) as refused:
        claim(blocker / "state")
    assert "(ENGAGE_DATA_DIR)" in str(refused.value) and "\n" not in str(refused.value)
