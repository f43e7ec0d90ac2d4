#pragma once
// Which blocks of a firmware artifact a device holds. Blocks for a rollout wave are published
// once on a shared topic; each device fetches only what its bitmap lacks. Pure value type, no
// I/O; the wire form is little-endian bit order, block i at byte i/8, bit i%8.

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "flotilla/core/result.hpp"

namespace flotilla::ota {

class BlockBitmap {
 public:
  // Largest artifact in blocks (4 GiB at 4 KiB blocks).
  static constexpr std::uint32_t max_blocks = 1u << 20;

  // Errors: invalid_argument when blocks is 0 or above max_blocks.
  static Result<BlockBitmap> create(std::uint32_t blocks);
  // Errors: invalid_argument for a size mismatch or bits set past the last block.
  static Result<BlockBitmap> decode(std::uint32_t blocks, std::string_view bytes);

  std::uint32_t blocks() const { return blocks_; }
  std::uint32_t count() const { return count_; }
  bool complete() const { return count_ == blocks_; }
  bool has(std::uint32_t block) const;
  // Marks a block held; returns false when the index is out of range.
  bool set(std::uint32_t block);
  // Missing blocks as [first, last] inclusive ranges, at most `max_ranges` of them.
  std::vector<std::pair<std::uint32_t, std::uint32_t>> missing(std::size_t max_ranges) const;
  std::string encode() const { return bits_; }

 private:
  explicit BlockBitmap(std::uint32_t blocks) : blocks_(blocks), bits_((blocks + 7) / 8, '\0') {}
  std::uint32_t blocks_;
  std::uint32_t count_ = 0;
  std::string bits_;
};

}  // namespace flotilla::ota
