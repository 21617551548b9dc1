import pytest

from mcushard.data import shared_file


@pytest.fixture(scope="session")
def stories260k_path():
    return shared_file("tinyllamas/stories260K.bin")


@pytest.fixture(scope="session")
def stories260k(stories260k_path):
    from mcushard.model.llama2c import load_llama2c

    return load_llama2c(stories260k_path)
