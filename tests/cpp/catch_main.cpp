// Catch2 v2 needs one translation unit to define main; v3 links Catch2WithMain instead.
#if defined(DILATED_ATTENTION_CATCH2_V2)
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#endif
