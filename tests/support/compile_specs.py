"""A ModuleSpec look-alike whose source is given as text (or an exception `source()` raises), for the
compile-check tests (test_compile_check, test_compile_check_report)."""


class FakeSpec:
    def __init__(self, src="SRC", names=(), sass_expect=(), archs=(), name="fake"):
        self.name, self.name_expressions, self.sass_expect, self.archs, self._src = name, tuple(names), \
            tuple(sass_expect), tuple(archs), src

    def source(self):
        if isinstance(self._src, Exception):
            raise self._src
        return self._src
