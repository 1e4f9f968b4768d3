import pytest

from facerec.registry import Registry


def test_register_create_alias_and_list():
    reg: Registry = Registry("thing")

    @reg.register("alpha", aliases=("a",))
    def build_alpha(x=1):
        return ("alpha", x)

    @reg.register()
    def beta():
        return "beta"

    assert reg.create("a", x=3) == ("alpha", 3)
    assert reg.create("beta") == "beta"
    assert reg.list() == ["alpha", "beta"]
    assert reg.list("al*") == ["alpha"]
    assert "a" in reg and "gamma" not in reg


def test_duplicate_registration_is_an_error():
    reg: Registry = Registry("thing")
    reg.register("x")(lambda: 1)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("x")(lambda: 2)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("y", aliases=("x",))(lambda: 2)


def test_unknown_name_suggests():
    reg: Registry = Registry("model")
    reg.register("iresnet50")(lambda: 1)
    with pytest.raises(KeyError, match="did you mean 'iresnet50'"):
        reg.create("iresnet5")
