#include <doctest/doctest.h>

#include "flotilla/ota/block_bitmap.hpp"

using namespace flotilla;
using flotilla::ota::BlockBitmap;

TEST_CASE("block bitmap: set, count, missing ranges and a wire round trip") {
  auto b = BlockBitmap::create(20).value();
  CHECK(b.count() == 0);
  CHECK(b.missing(10) == std::vector<std::pair<std::uint32_t, std::uint32_t>>{{0, 19}});
  for (std::uint32_t i : {0u, 1u, 2u, 7u, 8u, 19u}) CHECK(b.set(i));
  CHECK(b.set(8));  // idempotent
  CHECK_FALSE(b.set(20));
  CHECK(b.count() == 6);
  CHECK(b.has(7));
  CHECK_FALSE(b.has(6));
  CHECK(b.missing(10) == std::vector<std::pair<std::uint32_t, std::uint32_t>>{{3, 6}, {9, 18}});
  CHECK(b.missing(1).size() == 1);
  auto back = BlockBitmap::decode(20, b.encode());
  REQUIRE(back);
  CHECK(back->count() == 6);
  CHECK(back->missing(10) == b.missing(10));
  for (std::uint32_t i = 0; i < 20; ++i) b.set(i);
  CHECK(b.complete());
  CHECK(b.missing(10).empty());
}

TEST_CASE("block bitmap rejects hostile sizes and stray bits") {
  CHECK_FALSE(BlockBitmap::create(0));
  CHECK_FALSE(BlockBitmap::create(BlockBitmap::max_blocks + 1));
  CHECK_FALSE(BlockBitmap::decode(20, std::string(2, '\0')));
  CHECK_FALSE(BlockBitmap::decode(20, std::string("\x00\x00\x10", 3)));  // bit 20 is past the end
  CHECK(BlockBitmap::decode(20, std::string("\xff\xff\x0f", 3))->complete());
}
