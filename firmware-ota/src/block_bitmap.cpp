#include "flotilla/ota/block_bitmap.hpp"

#include <bit>

namespace flotilla::ota {

Result<BlockBitmap> BlockBitmap::create(std::uint32_t blocks) {
  if (blocks == 0 || blocks > max_blocks) {
    return make_error(Errc::invalid_argument, "block count {} outside 1..{}", blocks, max_blocks);
  }
  return BlockBitmap(blocks);
}

Result<BlockBitmap> BlockBitmap::decode(std::uint32_t blocks, std::string_view bytes) {
  auto bitmap = create(blocks);
  if (!bitmap) return bitmap;
  if (bytes.size() != bitmap->bits_.size()) {
    return make_error(Errc::invalid_argument, "bitmap of {} bytes for {} blocks (expected {})", bytes.size(), blocks,
                      bitmap->bits_.size());
  }
  const unsigned tail_bits = blocks % 8;
  if (tail_bits != 0 && (static_cast<unsigned char>(bytes.back()) >> tail_bits) != 0) {
    return make_error(Errc::invalid_argument, "bitmap has bits set past block {}", blocks - 1);
  }
  bitmap->bits_.assign(bytes);
  for (char c : bytes) bitmap->count_ += static_cast<std::uint32_t>(std::popcount(static_cast<unsigned char>(c)));
  return bitmap;
}

bool BlockBitmap::has(std::uint32_t block) const {
  return block < blocks_ && (static_cast<unsigned char>(bits_[block / 8]) >> (block % 8) & 1u) != 0;
}

bool BlockBitmap::set(std::uint32_t block) {
  if (block >= blocks_) return false;
  if (!has(block)) {
    bits_[block / 8] = static_cast<char>(static_cast<unsigned char>(bits_[block / 8]) | (1u << (block % 8)));
    ++count_;
  }
  return true;
}

std::vector<std::pair<std::uint32_t, std::uint32_t>> BlockBitmap::missing(std::size_t max_ranges) const {
  std::vector<std::pair<std::uint32_t, std::uint32_t>> out;
  std::uint32_t i = 0;
  while (i < blocks_ && out.size() < max_ranges) {
    if (has(i)) {
      ++i;
      continue;
    }
    const std::uint32_t first = i;
    while (i < blocks_ && !has(i)) ++i;
    out.emplace_back(first, i - 1);
  }
  return out;
}

}  // namespace flotilla::ota
