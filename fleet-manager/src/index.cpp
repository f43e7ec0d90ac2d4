#include "flotilla/manager/index.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>

namespace flotilla::manager {

using query::FieldType;
using query::Node;
using query::Op;
using query::Predicate;

namespace {

// Set bits of a word. The build targets baseline x86-64, where __builtin_popcountll is a call into
// libgcc; this is a handful of inline instructions.
inline std::uint64_t popcount64(std::uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
  return (x * 0x0101010101010101ULL) >> 56;
}

// Sets the bits of `slots` in `bits` (inline, unlike SlotSet::set).
template <typename Slots>
void set_all(SlotSet& bits, const Slots& slots) {
  auto& words = bits.words();
  for (const std::uint32_t s : slots) {
    if (s / 64 >= words.size()) words.resize(s / 64 + 1, 0);
    words[s / 64] |= std::uint64_t{1} << (s % 64);
  }
}

}  // namespace

void SlotSet::set(std::uint32_t slot) {
  const std::size_t w = slot / 64;
  if (w >= words_.size()) words_.resize(w + 1, 0);
  words_[w] |= std::uint64_t{1} << (slot % 64);
}

void SlotSet::reset(std::uint32_t slot) {
  const std::size_t w = slot / 64;
  if (w < words_.size()) words_[w] &= ~(std::uint64_t{1} << (slot % 64));
}

bool SlotSet::test(std::uint32_t slot) const {
  const std::size_t w = slot / 64;
  return w < words_.size() && ((words_[w] >> (slot % 64)) & 1u) != 0;
}

std::uint64_t SlotSet::count() const {
  std::uint64_t n = 0;
  for (auto w : words_) n += popcount64(w);
  return n;
}

void SlotSet::and_with(const SlotSet& other) {
  const std::size_t n = std::min(words_.size(), other.words_.size());
  for (std::size_t i = 0; i < n; ++i) words_[i] &= other.words_[i];
  for (std::size_t i = n; i < words_.size(); ++i) words_[i] = 0;
}

void SlotSet::or_with(const SlotSet& other) {
  if (other.words_.size() > words_.size()) words_.resize(other.words_.size(), 0);
  for (std::size_t i = 0; i < other.words_.size(); ++i) words_[i] |= other.words_[i];
}

void SlotSet::and_not(const SlotSet& other) {
  const std::size_t n = std::min(words_.size(), other.words_.size());
  for (std::size_t i = 0; i < n; ++i) words_[i] &= ~other.words_[i];
}

namespace {

// Distinct values past which a text column keeps no postings (serials, hostnames).
constexpr std::size_t kMaxPostingValues = 4096;
// A posting or a result stays a sorted vector of slots while it holds at most 1/32 of the fleet
// (where the vector is as large as a bitset), a bitset past that.
constexpr std::size_t kSparseFactor = 32;
// Dictionaries of multi-valued columns up to this size are searched linearly (the versions of
// one package: one to four values); larger ones get a hash map.
constexpr std::size_t kLinearDictionary = 8;
// Entries per chunk of a value order: an insert or erase moves at most this many.
constexpr std::size_t kChunkMax = 512;
// Sorting on a text column ranks its distinct values first when it has at most this many.
constexpr std::size_t kMaxRankedValues = std::size_t{1} << 16;
constexpr double kAbsent = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

struct StringHash {
  using is_transparent = void;  // NOLINT(readability-identifier-naming): the standard library's name
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

bool is_number(FieldType t) { return t == FieldType::number || t == FieldType::time; }
bool sparse_size(std::uint64_t n, std::size_t slots) { return n * kSparseFactor <= slots; }
std::size_t words_for(std::size_t slots) { return (slots + 63) / 64; }
double log2_of(std::uint64_t n) { return std::log2(static_cast<double>(n) + 2.0); }

std::string format_number(double v) {
  if (std::isnan(v)) return {};
  if (std::floor(v) == v && std::fabs(v) < 1e15) return fmt::format("{}", static_cast<std::int64_t>(v));
  return fmt::format("{}", v);
}

const std::vector<std::string> kDefaultProjection{"kind",       "online",           "os.name",
                                                  "os.version", "firmware.version", "last_seen"};

// The slots holding one value: a sorted vector while sparse, a bitset past that (held inline:
// loading touches thousands of postings per device, one indirection less each).
class Posting {
 public:
  // False when the slot was already there.
  bool add(std::uint32_t slot, std::size_t slots) {
    if (dense_) {
      auto& words = bits_.words();
      const std::size_t w = slot / 64;
      if (w >= words.size()) words.resize(std::max(w + 1, words_for(slots)), 0);
      const std::uint64_t bit = std::uint64_t{1} << (slot % 64);
      if ((words[w] & bit) != 0) return false;
      words[w] |= bit;
    } else if (sparse_.empty() || sparse_.back() < slot) {
      sparse_.push_back(slot);  // the common case while loading: slots arrive in order
    } else {
      const auto it = std::lower_bound(sparse_.begin(), sparse_.end(), slot);
      if (*it == slot) return false;
      sparse_.insert(it, slot);
    }
    ++count_;
    if (!dense_ && sparse_.size() > std::max<std::size_t>(64, slots / kSparseFactor)) {
      bits_.resize(slots);
      set_all(bits_, sparse_);
      sparse_.clear();
      sparse_.shrink_to_fit();
      dense_ = true;
    }
    return true;
  }
  // False when the slot was not there.
  bool remove(std::uint32_t slot) {
    if (dense_) {
      if (!test(slot)) return false;
      bits_.reset(slot);
    } else {
      const auto it = std::lower_bound(sparse_.begin(), sparse_.end(), slot);
      if (it == sparse_.end() || *it != slot) return false;
      sparse_.erase(it);
    }
    --count_;
    return true;
  }
  bool test(std::uint32_t slot) const {
    if (dense_) {
      const auto& words = bits_.words();
      const std::size_t w = slot / 64;
      return w < words.size() && ((words[w] >> (slot % 64)) & 1u) != 0;
    }
    return std::binary_search(sparse_.begin(), sparse_.end(), slot);
  }
  std::uint64_t count() const { return count_; }
  const SlotSet* dense() const { return dense_ ? &bits_ : nullptr; }
  const std::vector<std::uint32_t>& sparse() const { return sparse_; }
  template <typename F>
  void for_each(F&& f) const {
    if (dense_) {
      bits_.for_each(f);
    } else {
      for (auto s : sparse_) f(s);
    }
  }
  // Rough costs (about ns) for the planner: testing one slot, and visiting every member.
  double test_cost() const { return dense_ ? 1.5 : 4.0 + log2_of(count_); }
  double visit_cost() const {
    return dense_ ? static_cast<double>(bits_.words().size()) / 4 + static_cast<double>(count_)
                  : static_cast<double>(count_);
  }
  std::size_t bytes() const { return dense_ ? bits_.bytes() : sparse_.capacity() * sizeof(std::uint32_t); }

  // For snapshots: the members as stored, and a posting rebuilt from them.
  bool is_dense() const { return dense_; }
  const std::vector<std::uint64_t>& words() const { return bits_.words(); }
  static Posting restore(std::vector<std::uint32_t> sparse, std::vector<std::uint64_t> words, bool dense,
                         std::uint64_t count) {
    Posting p;
    p.sparse_ = std::move(sparse);
    p.bits_.words() = std::move(words);
    p.dense_ = dense;
    p.count_ = count;
    return p;
  }

 private:
  std::vector<std::uint32_t> sparse_;
  SlotSet bits_;
  std::uint64_t count_ = 0;
  bool dense_ = false;
};

// A set of slots produced by evaluating a query: a sorted vector while small, a bitset past that.
struct Sel {
  bool dense = false;
  std::vector<std::uint32_t> list;  // sorted, when !dense
  SlotSet bits;                     // when dense
  std::uint64_t n = 0;

  bool test(std::uint32_t slot) const {
    return dense ? bits.test(slot) : std::binary_search(list.begin(), list.end(), slot);
  }
  template <typename F>
  void for_each(F&& f) const {
    if (dense) {
      bits.for_each(f);
    } else {
      for (auto s : list) f(s);
    }
  }
};

Sel sel_from_list(std::vector<std::uint32_t> sorted, std::size_t slots) {
  Sel r;
  r.n = sorted.size();
  if (sparse_size(r.n, slots)) {
    r.list = std::move(sorted);
    return r;
  }
  r.dense = true;
  r.bits.resize(slots);
  set_all(r.bits, sorted);
  return r;
}

Sel sel_from_bits(SlotSet bits, std::uint64_t n, std::size_t slots) {
  Sel r;
  r.n = n;
  if (sparse_size(n, slots)) {
    r.list.reserve(n);
    bits.for_each([&](std::uint32_t s) { r.list.push_back(s); });
    return r;
  }
  r.dense = true;
  r.bits = std::move(bits);
  return r;
}

Sel sel_of_posting(const Posting& p, std::size_t slots) {
  if (const SlotSet* d = p.dense()) {
    SlotSet copy = *d;
    copy.resize(slots);
    return sel_from_bits(std::move(copy), p.count(), slots);
  }
  Sel r;
  r.list = p.sparse();
  r.n = r.list.size();
  return r;
}

void make_dense(Sel& s, std::size_t slots) {
  if (s.dense) return;
  s.bits = SlotSet();
  s.bits.resize(slots);
  set_all(s.bits, s.list);
  s.list.clear();
  s.list.shrink_to_fit();
  s.dense = true;
}

// Keeps the members of `s` for which keep(slot) holds.
template <typename Keep>
Sel filter(const Sel& s, Keep&& keep, std::size_t slots) {
  if (!s.dense) {
    Sel r;
    for (auto slot : s.list) {
      if (keep(slot)) r.list.push_back(slot);
    }
    r.n = r.list.size();
    return r;
  }
  SlotSet out;
  out.resize(slots);
  auto& ow = out.words();
  const auto& iw = s.bits.words();
  std::uint64_t n = 0;
  for (std::size_t w = 0; w < iw.size() && w < ow.size(); ++w) {
    std::uint64_t bits = iw[w];
    std::uint64_t kept = 0;
    while (bits != 0) {
      const int b = __builtin_ctzll(bits);
      bits &= bits - 1;
      if (keep(static_cast<std::uint32_t>(w * 64 + static_cast<std::size_t>(b)))) kept |= std::uint64_t{1} << b;
    }
    ow[w] = kept;
    n += popcount64(kept);
  }
  return sel_from_bits(std::move(out), n, slots);
}

Sel intersect(Sel a, const Sel& b, std::size_t slots) {
  if (!a.dense && !b.dense) {
    Sel r;
    std::set_intersection(a.list.begin(), a.list.end(), b.list.begin(), b.list.end(), std::back_inserter(r.list));
    r.n = r.list.size();
    return r;
  }
  if (!a.dense)
    return filter(
        a, [&](std::uint32_t s) { return b.bits.test(s); }, slots);
  if (!b.dense)
    return filter(
        b, [&](std::uint32_t s) { return a.bits.test(s); }, slots);
  a.bits.and_with(b.bits);
  const auto n = a.bits.count();
  return sel_from_bits(std::move(a.bits), n, slots);
}

Sel unite(Sel a, const Sel& b, std::size_t slots) {
  if (!a.dense && !b.dense && sparse_size(a.n + b.n, slots)) {
    Sel r;
    std::set_union(a.list.begin(), a.list.end(), b.list.begin(), b.list.end(), std::back_inserter(r.list));
    r.n = r.list.size();
    return r;
  }
  make_dense(a, slots);
  if (b.dense) {
    a.bits.or_with(b.bits);
  } else {
    set_all(a.bits, b.list);
  }
  a.n = a.bits.count();
  return a;
}

Sel subtract(Sel a, const Sel& b, std::size_t slots) {
  if (!a.dense)
    return filter(
        a, [&](std::uint32_t s) { return !b.test(s); }, slots);
  if (b.dense) {
    a.bits.and_not(b.bits);
  } else {
    for (auto s : b.list) a.bits.reset(s);
  }
  const auto n = a.bits.count();
  return sel_from_bits(std::move(a.bits), n, slots);
}

// The (value, slot) pairs of a number column in (value, slot) order, in chunks of at most
// kChunkMax entries, so an insert or erase moves a few KB and a rank is two binary searches.
class Ordered {
 public:
  std::size_t size() const { return size_; }

  // Replaces the content with these entries (any order).
  void build(std::vector<std::pair<double, std::uint32_t>> entries) {
    std::sort(entries.begin(), entries.end());
    std::vector<double> values(entries.size());
    std::vector<std::uint32_t> slots(entries.size());
    for (std::size_t i = 0; i < entries.size(); ++i) {
      values[i] = entries[i].first;
      slots[i] = entries[i].second;
    }
    assign_sorted(values, slots);
  }

  // Replaces the content with entries already in (value, slot) order.
  void assign_sorted(const std::vector<double>& values, const std::vector<std::uint32_t>& slots) {
    chunks_.clear();
    size_ = values.size();
    constexpr std::size_t kFill = kChunkMax * 3 / 4;  // room to grow before the first splits
    for (std::size_t i = 0; i < values.size(); i += kFill) {
      const auto from = static_cast<std::ptrdiff_t>(i);
      const auto to = static_cast<std::ptrdiff_t>(std::min(values.size(), i + kFill));
      Chunk c;
      c.values.assign(values.begin() + from, values.begin() + to);
      c.slots.assign(slots.begin() + from, slots.begin() + to);
      chunks_.push_back(std::move(c));
    }
    dirty_ = true;
  }

  // Every entry in order.
  void flatten(std::vector<double>& values, std::vector<std::uint32_t>& slots) const {
    values.clear();
    slots.clear();
    values.reserve(size_);
    slots.reserve(size_);
    for (const auto& c : chunks_) {
      values.insert(values.end(), c.values.begin(), c.values.end());
      slots.insert(slots.end(), c.slots.begin(), c.slots.end());
    }
  }

  void insert(double v, std::uint32_t slot) {
    if (chunks_.empty()) chunks_.emplace_back();
    const std::size_t c = find_chunk(v, slot);
    Chunk& chunk = chunks_[c];
    const std::size_t at = position(chunk, v, slot);
    chunk.values.insert(chunk.values.begin() + static_cast<std::ptrdiff_t>(at), v);
    chunk.slots.insert(chunk.slots.begin() + static_cast<std::ptrdiff_t>(at), slot);
    ++size_;
    dirty_ = true;
    if (chunk.values.size() > kChunkMax) {
      const auto half = static_cast<std::ptrdiff_t>(chunk.values.size() / 2);
      Chunk upper;
      upper.values.assign(chunk.values.begin() + half, chunk.values.end());
      upper.slots.assign(chunk.slots.begin() + half, chunk.slots.end());
      chunk.values.resize(static_cast<std::size_t>(half));
      chunk.slots.resize(static_cast<std::size_t>(half));
      chunks_.insert(chunks_.begin() + static_cast<std::ptrdiff_t>(c) + 1, std::move(upper));
    }
  }

  // False when the entry is not there.
  bool erase(double v, std::uint32_t slot) {
    if (chunks_.empty()) return false;
    const std::size_t c = find_chunk(v, slot);
    Chunk& chunk = chunks_[c];
    const std::size_t at = position(chunk, v, slot);
    if (at >= chunk.values.size() || chunk.values[at] != v || chunk.slots[at] != slot) return false;
    chunk.values.erase(chunk.values.begin() + static_cast<std::ptrdiff_t>(at));
    chunk.slots.erase(chunk.slots.begin() + static_cast<std::ptrdiff_t>(at));
    --size_;
    dirty_ = true;
    if (chunk.values.empty()) {
      chunks_.erase(chunks_.begin() + static_cast<std::ptrdiff_t>(c));
    } else if (c + 1 < chunks_.size() && chunk.values.size() + chunks_[c + 1].values.size() <= kChunkMax / 2) {
      Chunk& next = chunks_[c + 1];
      chunk.values.insert(chunk.values.end(), next.values.begin(), next.values.end());
      chunk.slots.insert(chunk.slots.end(), next.slots.begin(), next.slots.end());
      chunks_.erase(chunks_.begin() + static_cast<std::ptrdiff_t>(c) + 1);
    }
    return true;
  }

  // Entries whose value is below v (or at most v when inclusive).
  std::size_t rank(double v, bool inclusive) const {
    refresh();
    // The first chunk whose last value is not counted.
    std::size_t lo = 0, hi = chunks_.size();
    while (lo < hi) {
      const std::size_t mid = (lo + hi) / 2;
      const double last = chunks_[mid].values.back();
      if (inclusive ? last <= v : last < v) lo = mid + 1;
      else hi = mid;
    }
    if (lo == chunks_.size()) return size_;
    const auto& values = chunks_[lo].values;
    const auto it = inclusive ? std::upper_bound(values.begin(), values.end(), v)
                              : std::lower_bound(values.begin(), values.end(), v);
    return before_[lo] + static_cast<std::size_t>(it - values.begin());
  }

  // Calls f(value, slot) for the entries of rank from .. to-1, in ascending order (descending:
  // from to-1 down to from), until f returns false.
  template <typename F>
  void visit(std::size_t from, std::size_t to, bool descending, F&& f) const {
    if (from >= to) return;
    refresh();
    auto chunk_of = [&](std::size_t rank) {
      return static_cast<std::size_t>(std::upper_bound(before_.begin(), before_.end(), rank) - before_.begin()) - 1;
    };
    if (!descending) {
      for (std::size_t c = chunk_of(from), r = from; r < to; ++c) {
        const Chunk& chunk = chunks_[c];
        for (std::size_t i = r - before_[c]; i < chunk.values.size() && r < to; ++i, ++r) {
          if (!f(chunk.values[i], chunk.slots[i])) return;
        }
      }
      return;
    }
    std::size_t r = to;  // entries of rank [from, r) are left
    for (std::size_t c = chunk_of(to - 1);; --c) {
      const Chunk& chunk = chunks_[c];
      for (std::size_t i = r - before_[c]; i > 0 && r > from; --r) {
        --i;
        if (!f(chunk.values[i], chunk.slots[i])) return;
      }
      if (r == from || c == 0) return;
    }
  }

  std::size_t bytes() const {
    std::size_t n = chunks_.capacity() * sizeof(Chunk) + before_.capacity() * sizeof(std::size_t);
    for (const auto& c : chunks_)
      n += c.values.capacity() * sizeof(double) + c.slots.capacity() * sizeof(std::uint32_t);
    return n;
  }

 private:
  struct Chunk {
    std::vector<double> values;
    std::vector<std::uint32_t> slots;
  };

  static bool pair_less(double v1, std::uint32_t s1, double v2, std::uint32_t s2) {
    return v1 < v2 || (v1 == v2 && s1 < s2);
  }

  // The chunk that holds (v, slot), or would: the first whose last entry is not below it, else
  // the last chunk.
  std::size_t find_chunk(double v, std::uint32_t slot) const {
    std::size_t lo = 0, hi = chunks_.size();
    while (lo < hi) {
      const std::size_t mid = (lo + hi) / 2;
      const Chunk& c = chunks_[mid];
      if (!c.values.empty() && pair_less(c.values.back(), c.slots.back(), v, slot)) lo = mid + 1;
      else hi = mid;
    }
    return std::min(lo, chunks_.size() - 1);
  }

  // The first index of the chunk whose entry is not below (v, slot).
  static std::size_t position(const Chunk& c, double v, std::uint32_t slot) {
    std::size_t lo = 0, hi = c.values.size();
    while (lo < hi) {
      const std::size_t mid = (lo + hi) / 2;
      if (pair_less(c.values[mid], c.slots[mid], v, slot)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  void refresh() const {
    if (!dirty_) return;
    before_.resize(chunks_.size());
    std::size_t n = 0;
    for (std::size_t c = 0; c < chunks_.size(); ++c) {
      before_[c] = n;
      n += chunks_[c].values.size();
    }
    dirty_ = false;
  }

  std::vector<Chunk> chunks_;
  mutable std::vector<std::size_t> before_;  // entries before each chunk
  mutable bool dirty_ = true;
  std::size_t size_ = 0;
};

// The value numbers of a text column, slot -> value id + 1 (0: absent), one, two or four bytes
// wide as the dictionary needs: most columns have a few dozen values and take a byte per slot,
// which keeps the column in cache when a query decides its candidates one by one.
class Codes {
 public:
  std::size_t size() const {
    switch (width_) {
      case 1: return b8_.size();
      case 2: return b16_.size();
      default: return b32_.size();
    }
  }
  std::uint32_t get(std::size_t i) const {
    switch (width_) {
      case 1: return i < b8_.size() ? b8_[i] : 0u;
      case 2: return i < b16_.size() ? b16_[i] : 0u;
      default: return i < b32_.size() ? b32_[i] : 0u;
    }
  }
  // The slot must be below size().
  void put(std::size_t i, std::uint32_t code) {
    switch (width_) {
      case 1: b8_[i] = static_cast<std::uint8_t>(code); return;
      case 2: b16_[i] = static_cast<std::uint16_t>(code); return;
      default: b32_[i] = code; return;
    }
  }
  void resize(std::size_t n) {
    switch (width_) {
      case 1: b8_.resize(n, 0); return;
      case 2: b16_.resize(n, 0); return;
      default: b32_.resize(n, 0); return;
    }
  }
  // Makes room for codes up to `max_code`.
  void widen_for(std::uint32_t max_code) {
    if (width_ == 1 && max_code > 0xff) {
      b16_.assign(b8_.begin(), b8_.end());
      b8_ = {};
      width_ = 2;
    }
    if (width_ == 2 && max_code > 0xffff) {
      b32_.assign(b16_.begin(), b16_.end());
      b16_ = {};
      width_ = 4;
    }
  }
  // Calls f with the vector in use (of uint8_t, uint16_t or uint32_t).
  template <typename F>
  decltype(auto) visit(F&& f) const {
    switch (width_) {
      case 1: return f(b8_);
      case 2: return f(b16_);
      default: return f(b32_);
    }
  }
  unsigned width() const { return width_; }
  std::size_t bytes() const { return b8_.capacity() + 2 * b16_.capacity() + 4 * b32_.capacity(); }
  // For snapshots.
  std::vector<std::uint8_t>& b8() { return b8_; }
  std::vector<std::uint16_t>& b16() { return b16_; }
  std::vector<std::uint32_t>& b32() { return b32_; }
  void set_width(unsigned w) { width_ = w; }

 private:
  unsigned width_ = 1;
  std::vector<std::uint8_t> b8_;
  std::vector<std::uint16_t> b16_;
  std::vector<std::uint32_t> b32_;
};

// Single-valued text, version and boolean fields: dictionary-encoded.
struct TextColumn {
  FieldType type = FieldType::text;
  FactPart part = FactPart::record;
  Codes code;  // slot -> value id + 1; 0: absent
  std::vector<std::string> values;
  StringMap<std::uint32_t> ids;
  std::vector<std::uint64_t> counts;
  std::vector<Posting> postings;  // parallel to values while postings_on
  bool postings_on = true;
  std::uint64_t present = 0;
  std::uint64_t touched = 0;  // generation of the last update that set this column

  std::uint32_t get(std::uint32_t slot) const { return code.get(slot); }

  std::uint32_t intern(std::string_view value) {
    if (auto it = ids.find(value); it != ids.end()) return it->second;
    const auto id = static_cast<std::uint32_t>(values.size());
    code.widen_for(id + 1);
    values.emplace_back(value);
    ids.emplace(values.back(), id);
    counts.push_back(0);
    if (postings_on) {
      postings.emplace_back();
      if (values.size() > kMaxPostingValues) {
        postings_on = false;
        postings.clear();
        postings.shrink_to_fit();
      }
    }
    return id;
  }

  // The slot must hold no value.
  void set(std::uint32_t slot, std::uint32_t id, std::size_t slots) {
    if (slot >= code.size()) code.resize(std::max<std::size_t>(slots, slot + 1));
    code.put(slot, id + 1);
    ++counts[id];
    ++present;
    if (postings_on) postings[id].add(slot, slots);
  }

  void clear(std::uint32_t slot) {
    const std::uint32_t v = get(slot);
    if (v == 0) return;
    code.put(slot, 0);
    --counts[v - 1];
    --present;
    if (postings_on) postings[v - 1].remove(slot);
  }

  std::size_t bytes() const {
    std::size_t n = code.bytes() + counts.capacity() * sizeof(std::uint64_t);
    for (const auto& v : values) n += v.capacity() + sizeof(std::string) + 32;
    for (const auto& p : postings) n += p.bytes() + sizeof(Posting);
    return n;
  }
};

// Numbers and times: a column of doubles (NaN: absent) and, once a query needed it, the value
// order, kept up to date from then on.
struct NumberColumn {
  FieldType type = FieldType::number;
  FactPart part = FactPart::record;
  std::vector<double> value_of;
  std::uint64_t present = 0;
  std::uint64_t touched = 0;
  mutable Ordered order;
  mutable bool ordered = false;

  double get(std::uint32_t slot) const { return slot < value_of.size() ? value_of[slot] : kAbsent; }

  // The slot must hold no value.
  void set(std::uint32_t slot, double v, std::size_t slots) {
    if (slot >= value_of.size()) value_of.resize(std::max<std::size_t>(slots, slot + 1), kAbsent);
    value_of[slot] = v;
    ++present;
    if (ordered) order.insert(v, slot);
  }

  void clear(std::uint32_t slot) {
    if (slot >= value_of.size() || std::isnan(value_of[slot])) return;
    if (ordered) order.erase(value_of[slot], slot);
    value_of[slot] = kAbsent;
    --present;
  }

  const Ordered& sorted() const {
    if (!ordered) {
      std::vector<std::pair<double, std::uint32_t>> entries;
      entries.reserve(present);
      for (std::size_t s = 0; s < value_of.size(); ++s) {
        if (!std::isnan(value_of[s])) entries.emplace_back(value_of[s], static_cast<std::uint32_t>(s));
      }
      order.build(std::move(entries));
      ordered = true;
    }
    return order;
  }

  std::size_t bytes() const { return value_of.capacity() * sizeof(double) + (ordered ? order.bytes() : 0); }
};

// A multi-valued field (tag, group) or the versions of one installed package: a posting per
// value, held in the index's entry table.
struct MultiColumn {
  std::string field;    // "tag", "group", "software.openssl"
  std::string package;  // for software columns: the package, e.g. "openssl"
  FactPart part = FactPart::record;
  std::vector<std::string> values;
  std::vector<std::uint32_t> entry;  // value id -> entry id
  StringMap<std::uint32_t> ids;      // value -> value id, once past kLinearDictionary values

  // The value id of `value`, or values.size() when unknown.
  std::uint32_t find(std::string_view value) const {
    if (values.size() <= kLinearDictionary) {
      for (std::size_t i = 0; i < values.size(); ++i) {
        if (values[i] == value) return static_cast<std::uint32_t>(i);
      }
      return static_cast<std::uint32_t>(values.size());
    }
    auto it = ids.find(value);
    return it == ids.end() ? static_cast<std::uint32_t>(values.size()) : it->second;
  }

  std::size_t bytes() const {
    std::size_t n = field.capacity() + package.capacity() + entry.capacity() * sizeof(std::uint32_t) + 128;
    for (const auto& v : values) n += v.capacity() + sizeof(std::string) + (ids.empty() ? 0 : 48);
    return n;
  }
};

// One (multi-valued column, value) pair and its posting.
struct Entry {
  MultiColumn* column = nullptr;
  std::uint32_t value = 0;
  Posting posting;
};

// A number or time predicate as an interval; NaN (absent) is never inside.
struct Range {
  double lo = -kInf, hi = kInf;
  bool lo_in = true, hi_in = true;
  bool valid = true;  // false: an operand that is not a value of the field's type matches nothing

  bool operator()(double x) const { return (lo_in ? x >= lo : x > lo) && (hi_in ? x <= hi : x < hi); }
};

std::optional<double> operand(FieldType type, std::string_view text, std::int64_t now_ms) {
  if (type == FieldType::time) {
    auto ms = query::resolve_time(text, now_ms);
    if (!ms) return std::nullopt;
    return static_cast<double>(*ms);
  }
  return query::parse_number(text);
}

Range make_range(const Predicate& p, std::int64_t now_ms) {
  Range r;
  auto value = [&](std::string_view text, double& out) {
    if (auto v = operand(p.info.type, text, now_ms)) {
      out = *v;
    } else {
      r.valid = false;
    }
  };
  switch (p.op) {
    case Op::eq:
      value(p.value, r.lo);
      r.hi = r.lo;
      break;
    case Op::lt:
      value(p.value, r.hi);
      r.hi_in = false;
      break;
    case Op::le: value(p.value, r.hi); break;
    case Op::gt:
      value(p.value, r.lo);
      r.lo_in = false;
      break;
    case Op::ge: value(p.value, r.lo); break;
    case Op::range:
      if (p.low) {
        value(*p.low, r.lo);
        r.lo_in = p.low_inclusive;
      }
      if (p.high) {
        value(*p.high, r.hi);
        r.hi_in = p.high_inclusive;
      }
      break;
    case Op::exists: break;
    case Op::wildcard: r.valid = false; break;  // not allowed on numbers by the parser
  }
  return r;
}

// Builds the words of a bitset from a column, 64 slots at a time without branches.
template <bool LoIn, bool HiIn>
void scan_range(const double* v, std::size_t n, double lo, double hi, std::uint64_t* out) {
  const std::size_t full = n / 64;
  for (std::size_t w = 0; w < full; ++w) {
    std::uint64_t word = 0;
    const double* x = v + w * 64;
    for (unsigned b = 0; b < 64; ++b) {
      const bool m = (LoIn ? x[b] >= lo : x[b] > lo) & (HiIn ? x[b] <= hi : x[b] < hi);
      word |= static_cast<std::uint64_t>(m) << b;
    }
    out[w] = word;
  }
  std::uint64_t word = 0;
  for (std::size_t i = full * 64; i < n; ++i) {
    const bool m = (LoIn ? v[i] >= lo : v[i] > lo) & (HiIn ? v[i] <= hi : v[i] < hi);
    word |= static_cast<std::uint64_t>(m) << (i % 64);
  }
  if (n % 64 != 0) out[full] = word;
}

// A query node compiled against the columns: how to collect its matches or test one slot, and
// what each costs (roughly ns), for the planner.
struct Plan {
  enum class How { all, conjunction, disjunction, negation, nothing, id_lookup, id_scan, text, number, postings };
  const Node* node = nullptr;
  How how = How::nothing;
  std::vector<Plan> children;
  const TextColumn* text = nullptr;
  std::vector<std::uint8_t> hit;          // text: by code (value id + 1); hit[0] = 0
  std::vector<std::uint32_t> hit_values;  // text: the matching value ids
  const NumberColumn* number = nullptr;
  Range range;
  std::size_t rank_from = 0, rank_to = 0;  // number: the matching ranks of the value order
  std::vector<const Posting*> postings;    // postings: those of the matching values
  std::size_t values_total = 0;            // distinct values considered (for the plan text)
  bool software = false;
  std::uint32_t id_slot = 0;
  std::uint64_t est = 0;  // matches: exact for text, number and id; an upper bound otherwise
  double test_cost = 0, collect_cost = 0;
};

}  // namespace

FactPart part_of(std::string_view field) {
  if (field.starts_with("telemetry.")) return FactPart::telemetry;
  for (std::string_view p : {"software.", "hardware.", "os.", "cpu.", "memory.", "firmware.", "patch."}) {
    if (field.starts_with(p)) return FactPart::inventory;
  }
  return FactPart::record;
}

struct FleetIndex::Impl {
  std::vector<std::string> slot_id;
  StringMap<std::uint32_t> slot_of;
  std::vector<std::uint32_t> free_slots;
  SlotSet live;
  std::map<std::string, TextColumn, std::less<>> text;
  std::map<std::string, NumberColumn, std::less<>> numbers;
  std::map<std::string, MultiColumn, std::less<>> multi;     // tag, group
  std::map<std::string, MultiColumn, std::less<>> software;  // package -> its versions
  std::vector<Entry> entries;
  // Per slot: the entries it is in (tags and groups; installed packages).
  std::vector<std::vector<std::uint32_t>> multi_of, software_of;
  std::array<std::vector<TextColumn*>, 3> text_parts;
  std::array<std::vector<NumberColumn*>, 3> number_parts;

  // What a fact's field name is stored in, resolved once per distinct name.
  struct Ref {
    TextColumn* text = nullptr;
    NumberColumn* number = nullptr;
    MultiColumn* multi = nullptr;
    bool software = false;
    FactPart part = FactPart::record;
  };
  StringMap<Ref> resolved;
  StringMap<const Ref*> packages;  // package name -> what software.<package> resolves to
  std::uint64_t generation = 0;
  // Scratch of apply().
  std::vector<std::uint32_t> new_multi, new_software, old_list;

  std::size_t slots() const { return slot_id.size(); }

  const Ref& resolve(std::string_view field) {
    if (auto it = resolved.find(field); it != resolved.end()) return it->second;
    Ref r;
    r.part = part_of(field);
    auto info = query::find_field(field);
    if (info && field != "id" && field != "software.name") {
      if (info->family && field.starts_with("software.")) {
        auto [it, inserted] = software.try_emplace(std::string(field.substr(9)));
        if (inserted) {
          it->second.field = std::string(field);
          it->second.package = it->first;
          it->second.part = FactPart::inventory;
        }
        r.multi = &it->second;
        r.software = true;
      } else if (info->multi) {
        auto [it, inserted] = multi.try_emplace(std::string(field));
        if (inserted) {
          it->second.field = std::string(field);
          it->second.part = r.part;
        }
        r.multi = &it->second;
      } else if (is_number(info->type)) {
        auto [it, inserted] = numbers.try_emplace(std::string(field));
        if (inserted) {
          it->second.type = info->type;
          it->second.part = r.part;
          number_parts[static_cast<std::size_t>(r.part)].push_back(&it->second);
        }
        r.number = &it->second;
      } else {
        auto [it, inserted] = text.try_emplace(std::string(field));
        if (inserted) {
          it->second.type = info->type;
          it->second.part = r.part;
          text_parts[static_cast<std::size_t>(r.part)].push_back(&it->second);
        }
        r.text = &it->second;
      }
    }
    return resolved.emplace(std::string(field), r).first->second;
  }

  std::uint32_t entry_for(MultiColumn& c, std::string_view value) {
    const std::uint32_t v = c.find(value);
    if (v < c.values.size()) return c.entry[v];
    c.values.emplace_back(value);
    if (c.values.size() > kLinearDictionary) {
      if (c.ids.empty()) {
        for (std::size_t i = 0; i < c.values.size(); ++i) c.ids.emplace(c.values[i], static_cast<std::uint32_t>(i));
      } else {
        c.ids.emplace(c.values.back(), v);
      }
    }
    const auto e = static_cast<std::uint32_t>(entries.size());
    c.entry.push_back(e);
    entries.push_back({&c, v, Posting()});
    return e;
  }

  // The slot of a device, created when new (second: true).
  std::pair<std::uint32_t, bool> slot_for(std::string_view id) {
    if (auto it = slot_of.find(id); it != slot_of.end()) return {it->second, false};
    std::uint32_t slot = 0;
    if (!free_slots.empty()) {
      slot = free_slots.back();
      free_slots.pop_back();
      slot_id[slot] = std::string(id);
    } else {
      slot = static_cast<std::uint32_t>(slot_id.size());
      slot_id.emplace_back(id);
      multi_of.emplace_back();
      software_of.emplace_back();
    }
    slot_of.emplace(std::string(id), slot);
    live.set(slot);
    return {slot, true};
  }

  // Replaces the facts of one part of a device (or of all parts) with those it is given, as they
  // arrive. Single-valued columns are only touched where the value changes; the entries of a slot
  // that held none of that kind (every slot while loading) are added as they come, without the
  // sorted difference an update needs.
  class Applier final : public FactSink {
   public:
    Applier(Impl& m, std::string_view id, std::optional<FactPart> part) : m_(m), part_(part) {
      const auto [slot, fresh] = m.slot_for(id);
      slot_ = slot;
      fresh_ = fresh;
      n_ = m.slots();
      ++m.generation;
      m.new_multi.clear();
      m.new_software.clear();
      direct_multi_ = m.multi_of[slot].empty();
      direct_software_ = m.software_of[slot].empty();
    }

    void add(std::string_view field, std::string_view value) override { take(m_.resolve(field), value); }

    void add_package(std::string_view package, std::string_view version) override {
      if (part_ && *part_ != FactPart::inventory) return;
      auto it = m_.packages.find(package);
      if (it == m_.packages.end()) {
        std::string field;
        field.reserve(9 + package.size());
        field.append("software.").append(package);
        it = m_.packages.emplace(std::string(package), &m_.resolve(field)).first;
      }
      take(*it->second, version);
    }

    void finish() {
      if (!fresh_) {
        for (std::size_t p = 0; p < 3; ++p) {
          if (part_ && static_cast<std::size_t>(*part_) != p) continue;
          for (TextColumn* c : m_.text_parts[p]) {
            if (c->touched != m_.generation) c->clear(slot_);
          }
          for (NumberColumn* c : m_.number_parts[p]) {
            if (c->touched != m_.generation) c->clear(slot_);
          }
        }
      }
      // Tags and groups are record facts, packages inventory facts.
      if (!part_ || *part_ == FactPart::record) finish_entries(m_.multi_of[slot_], m_.new_multi, direct_multi_);
      if (!part_ || *part_ == FactPart::inventory) {
        finish_entries(m_.software_of[slot_], m_.new_software, direct_software_);
      }
    }

   private:
    void take(const Ref& r, std::string_view value) {
      if (part_ && r.part != *part_) return;
      if (r.text != nullptr) {
        TextColumn& c = *r.text;
        const std::uint32_t id = c.intern(value);
        c.touched = m_.generation;
        if (c.get(slot_) != id + 1) {
          c.clear(slot_);
          c.set(slot_, id, n_);
        }
      } else if (r.number != nullptr) {
        const auto v = query::parse_number(value);
        if (!v) return;  // not a number: no value, like NaN from a device
        NumberColumn& c = *r.number;
        c.touched = m_.generation;
        if (!(c.get(slot_) == *v)) {
          c.clear(slot_);
          c.set(slot_, *v, n_);
        }
      } else if (r.multi != nullptr) {
        const std::uint32_t e = m_.entry_for(*r.multi, value);
        const bool direct = r.software ? direct_software_ : direct_multi_;
        auto& scratch = r.software ? m_.new_software : m_.new_multi;
        if (!direct || m_.entries[e].posting.add(slot_, n_)) scratch.push_back(e);
      }
    }

    void finish_entries(std::vector<std::uint32_t>& current, std::vector<std::uint32_t>& scratch, bool direct) {
      if (direct) {
        current.assign(scratch.begin(), scratch.end());  // added already; one allocation of the right size
      } else {
        m_.replace_entries(slot_, current, scratch);
      }
    }

    Impl& m_;
    std::optional<FactPart> part_;
    std::uint32_t slot_ = 0;
    bool fresh_ = false;
    std::size_t n_ = 0;
    bool direct_multi_ = false, direct_software_ = false;
  };

  void apply(const DeviceFacts& facts, std::optional<FactPart> part) {
    Applier a(*this, facts.id, part);
    for (const auto& [field, value] : facts.values) a.add(field, value);
    a.finish();
  }

  void replace_entries(std::uint32_t slot, std::vector<std::uint32_t>& current, std::vector<std::uint32_t>& wanted) {
    std::sort(wanted.begin(), wanted.end());
    wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
    old_list.assign(current.begin(), current.end());
    std::sort(old_list.begin(), old_list.end());
    const std::size_t n = slots();
    auto o = old_list.begin();
    auto w = wanted.begin();
    while (o != old_list.end() || w != wanted.end()) {
      if (w == wanted.end() || (o != old_list.end() && *o < *w)) {
        entries[*o++].posting.remove(slot);
      } else if (o == old_list.end() || *w < *o) {
        entries[*w++].posting.add(slot, n);
      } else {
        ++o;
        ++w;
      }
    }
    current.assign(wanted.begin(), wanted.end());
    if (current.empty()) current.shrink_to_fit();
  }

  void clear_slot(std::uint32_t slot) {
    for (auto& [name, c] : text) c.clear(slot);
    for (auto& [name, c] : numbers) c.clear(slot);
    for (auto* list : {&multi_of[slot], &software_of[slot]}) {
      for (auto e : *list) entries[e].posting.remove(slot);
      list->clear();
      list->shrink_to_fit();
    }
  }

  // ---- Planning and evaluation ----

  Plan compile(const Node& n, std::int64_t now_ms) const {
    Plan p;
    p.node = &n;
    const double words = static_cast<double>(words_for(slots()));
    switch (n.kind) {
      case Node::Kind::all:
        p.how = Plan::How::all;
        p.est = slot_of.size();
        p.collect_cost = words / 4;
        return p;
      case Node::Kind::predicate: compile_predicate(n.predicate, now_ms, p); return p;
      case Node::Kind::not_: {
        p.how = Plan::How::negation;
        p.children.push_back(compile(n.children.front(), now_ms));
        const Plan& c = p.children.front();
        p.est = slot_of.size() - std::min<std::uint64_t>(slot_of.size(), c.est);
        p.test_cost = c.test_cost;
        p.collect_cost = c.collect_cost + words / 2;
        return p;
      }
      case Node::Kind::and_:
      case Node::Kind::or_: {
        const bool is_and = n.kind == Node::Kind::and_;
        p.how = is_and ? Plan::How::conjunction : Plan::How::disjunction;
        p.est = is_and ? slot_of.size() : 0;
        double cheapest = std::numeric_limits<double>::infinity();
        for (const auto& child : n.children) {
          p.children.push_back(compile(child, now_ms));
          const Plan& c = p.children.back();
          p.est = is_and ? std::min(p.est, c.est) : p.est + c.est;
          p.test_cost += c.test_cost;
          if (is_and) {
            cheapest = std::min(cheapest, c.collect_cost);
          } else {
            p.collect_cost += c.collect_cost + words / 4;
          }
        }
        if (is_and) p.collect_cost = cheapest + static_cast<double>(p.est) * p.test_cost;
        p.est = std::min<std::uint64_t>(p.est, slot_of.size());
        return p;
      }
    }
    return p;
  }

  void compile_predicate(const Predicate& pred, std::int64_t now_ms, Plan& p) const {
    const std::string& field = pred.field;
    const double words = static_cast<double>(words_for(slots()));
    const std::uint64_t live_n = slot_of.size();
    if (field == "id") {
      if (pred.op == Op::eq) {
        p.how = Plan::How::id_lookup;
        if (auto it = slot_of.find(pred.value); it != slot_of.end()) {
          p.id_slot = it->second;
          p.est = 1;
        }
        p.test_cost = 1;
        p.collect_cost = 1;
      } else {
        p.how = Plan::How::id_scan;
        p.est = live_n;
        p.test_cost = 40;
        p.collect_cost = 40 * static_cast<double>(live_n);
      }
      return;
    }
    auto add_postings = [&](const MultiColumn& c, bool all_values) {
      for (std::size_t v = 0; v < c.values.size(); ++v) {
        const Posting& posting = entries[c.entry[v]].posting;
        if (posting.count() == 0) continue;
        if (all_values || query::value_matches(pred, c.values[v], now_ms)) {
          p.postings.push_back(&posting);
          p.est += posting.count();
          p.test_cost += posting.test_cost();
          p.collect_cost += posting.visit_cost();
        }
      }
      p.values_total += c.values.size();
    };
    if (field == "software.name" || (pred.info.family && field.starts_with("software."))) {
      p.how = Plan::How::postings;
      p.software = true;
      if (field == "software.name") {
        for (const auto& [package, versions] : software) {
          if (query::value_matches(pred, package, now_ms)) add_postings(versions, true);
        }
      } else if (auto it = software.find(std::string_view(field).substr(9)); it != software.end()) {
        add_postings(it->second, false);
      }
    } else if (auto mit = multi.find(field); mit != multi.end()) {
      p.how = Plan::How::postings;
      add_postings(mit->second, false);
    } else if (auto nit = numbers.find(field); nit != numbers.end()) {
      p.how = Plan::How::number;
      p.number = &nit->second;
      p.range = make_range(pred, now_ms);
      p.test_cost = 2;
      if (p.range.valid) {
        const Ordered& o = nit->second.sorted();
        p.rank_from = o.rank(p.range.lo, !p.range.lo_in);
        p.rank_to = std::max(p.rank_from, o.rank(p.range.hi, p.range.hi_in));
        p.est = p.rank_to - p.rank_from;
      }
      const double n = static_cast<double>(p.est);
      p.collect_cost = sparse_size(p.est, slots()) ? n * (3 + log2_of(p.est))
                                                   : std::min(n * 3, static_cast<double>(slots()));
    } else if (auto tit = text.find(field); tit != text.end()) {
      const TextColumn& c = tit->second;
      p.how = Plan::How::text;
      p.text = &c;
      p.hit.assign(c.values.size() + 1, 0);
      p.values_total = c.values.size();
      auto take = [&](std::uint32_t v) {
        p.hit[v + 1] = 1;
        p.hit_values.push_back(v);
        p.est += c.counts[v];
        p.collect_cost += c.postings_on ? c.postings[v].visit_cost() : 0;
      };
      if (pred.op == Op::eq && c.type == FieldType::text) {
        if (auto v = c.ids.find(pred.value); v != c.ids.end() && c.counts[v->second] > 0) take(v->second);
      } else {
        for (std::size_t v = 0; v < c.values.size(); ++v) {
          if (c.counts[v] > 0 && query::value_matches(pred, c.values[v], now_ms)) take(static_cast<std::uint32_t>(v));
        }
      }
      p.test_cost = 2;
      if (c.postings_on && p.hit_values.size() == 1 && c.postings[p.hit_values.front()].dense() != nullptr) {
        p.test_cost = 1.5;  // one bit of the posting
      }
      if (!c.postings_on) p.collect_cost = 1.5 * static_cast<double>(slots());
    } else {
      p.how = Plan::How::nothing;
    }
    if (p.how == Plan::How::postings || (p.how == Plan::How::text && p.hit_values.size() > 1)) {
      if (sparse_size(p.est, slots())) {
        p.collect_cost += static_cast<double>(p.est) * 2;  // sorting the merged lists
      } else {
        p.collect_cost += words / 2;
      }
    }
    p.est = std::min(p.est, live_n);
  }

  Sel live_sel() const {
    SlotSet bits = live;
    bits.resize(slots());
    return sel_from_bits(std::move(bits), slot_of.size(), slots());
  }

  Sel union_of(const std::vector<const Posting*>& postings, std::uint64_t est, bool distinct) const {
    const std::size_t n = slots();
    if (postings.empty()) return {};
    if (postings.size() == 1) return sel_of_posting(*postings.front(), n);
    if (sparse_size(est, n)) {
      std::vector<std::uint32_t> list;
      list.reserve(est);
      for (const Posting* p : postings) p->for_each([&](std::uint32_t s) { list.push_back(s); });
      std::sort(list.begin(), list.end());
      if (!distinct) list.erase(std::unique(list.begin(), list.end()), list.end());
      return sel_from_list(std::move(list), n);
    }
    SlotSet bits;
    bits.resize(n);
    for (const Posting* p : postings) {
      if (const SlotSet* d = p->dense()) {
        bits.or_with(*d);
      } else {
        set_all(bits, p->sparse());
      }
    }
    const auto count = bits.count();
    return sel_from_bits(std::move(bits), count, n);
  }

  // Every match of a predicate, over the whole fleet; `how` names the strategy.
  Sel collect(const Plan& p, std::string& how) const {
    const std::size_t n = slots();
    switch (p.how) {
      case Plan::How::id_lookup: {
        how = "slot map lookup";
        Sel r;
        if (p.est == 1) {
          r.list.push_back(p.id_slot);
          r.n = 1;
        }
        return r;
      }
      case Plan::How::id_scan: {
        how = fmt::format("id scan of {} devices", slot_of.size());
        std::vector<std::uint32_t> list;
        live.for_each([&](std::uint32_t s) {
          if (query::value_matches(p.node->predicate, slot_id[s], 0)) list.push_back(s);
        });
        return sel_from_list(std::move(list), n);
      }
      case Plan::How::text: {
        const TextColumn& c = *p.text;
        if (c.postings_on) {
          how = fmt::format("postings: {} of {} values", p.hit_values.size(), p.values_total);
          std::vector<const Posting*> ps;
          ps.reserve(p.hit_values.size());
          for (auto v : p.hit_values) ps.push_back(&c.postings[v]);
          return union_of(ps, p.est, true);
        }
        how = fmt::format("column scan: {} of {} values", p.hit_values.size(), p.values_total);
        SlotSet bits;
        bits.resize(n);
        auto& words = bits.words();
        const std::uint8_t* hit = p.hit.data();
        c.code.visit([&](const auto& codes) {
          const std::size_t len = std::min(codes.size(), n);
          const auto* code = codes.data();
          for (std::size_t w = 0; w < len / 64; ++w) {
            std::uint64_t word = 0;
            for (unsigned b = 0; b < 64; ++b) word |= static_cast<std::uint64_t>(hit[code[w * 64 + b]]) << b;
            words[w] = word;
          }
          for (std::size_t s = len / 64 * 64; s < len; ++s) {
            if (hit[code[s]] != 0) bits.set(static_cast<std::uint32_t>(s));
          }
        });
        return sel_from_bits(std::move(bits), p.est, n);
      }
      case Plan::How::number: {
        const NumberColumn& c = *p.number;
        if (!p.range.valid || p.est == 0) {
          how = "value order: 0 entries";
          return {};
        }
        if (sparse_size(p.est, n)) {
          how = fmt::format("value order: {} entries", p.est);
          std::vector<std::uint32_t> list;
          list.reserve(p.est);
          c.order.visit(p.rank_from, p.rank_to, false, [&](double, std::uint32_t s) {
            list.push_back(s);
            return true;
          });
          std::sort(list.begin(), list.end());
          return sel_from_list(std::move(list), n);
        }
        SlotSet bits;
        bits.resize(n);
        if (p.est * 3 <= n) {
          how = fmt::format("value order: {} entries", p.est);
          c.order.visit(p.rank_from, p.rank_to, false, [&](double, std::uint32_t s) {
            bits.set(s);
            return true;
          });
        } else {
          how = fmt::format("column scan of {} slots", c.value_of.size());
          const std::size_t len = std::min(c.value_of.size(), n);
          const Range& r = p.range;
          auto* out = bits.words().data();
          if (r.lo_in && r.hi_in) scan_range<true, true>(c.value_of.data(), len, r.lo, r.hi, out);
          else if (r.lo_in) scan_range<true, false>(c.value_of.data(), len, r.lo, r.hi, out);
          else if (r.hi_in) scan_range<false, true>(c.value_of.data(), len, r.lo, r.hi, out);
          else scan_range<false, false>(c.value_of.data(), len, r.lo, r.hi, out);
        }
        return sel_from_bits(std::move(bits), p.est, n);
      }
      case Plan::How::postings: {
        how = p.software ? fmt::format("software postings: {} version sets", p.postings.size())
                         : fmt::format("postings: {} of {} values", p.postings.size(), p.values_total);
        return union_of(p.postings, p.est, false);
      }
      default: how = "no device has this field"; return {};
    }
  }

  // Decides one slot for a predicate.
  struct SlotTest {
    const Plan* p = nullptr;
    const FleetIndex::Impl* m = nullptr;
    const std::vector<std::uint64_t>* words = nullptr;  // a text value's dense posting: a bit test

    bool operator()(std::uint32_t s) const {
      switch (p->how) {
        case Plan::How::id_lookup: return p->est == 1 && s == p->id_slot;
        case Plan::How::id_scan: return query::value_matches(p->node->predicate, m->slot_id[s], 0);
        case Plan::How::text: {
          if (words != nullptr) return s / 64 < words->size() && (((*words)[s / 64] >> (s % 64)) & 1u) != 0;
          return p->hit[p->text->code.get(s)] != 0;
        }
        case Plan::How::number: {
          const auto& values = p->number->value_of;
          return p->range.valid && s < values.size() && p->range(values[s]);
        }
        case Plan::How::postings:
          for (const Posting* posting : p->postings) {
            if (posting->test(s)) return true;
          }
          return false;
        default: return false;
      }
    }

    // Keeps, in place and in order, those of slots[0..n) that match; returns how many. One
    // dispatch per batch, then a loop without branches on the outcome.
    std::size_t keep(std::uint32_t* slots, std::size_t n) const {
      std::size_t k = 0;
      if (words != nullptr) {
        const std::uint64_t* w = words->data();
        const std::size_t size = words->size();
        for (std::size_t i = 0; i < n; ++i) {
          const std::uint32_t s = slots[i];
          slots[k] = s;
          k += s / 64 < size ? ((w[s / 64] >> (s % 64)) & 1u) : 0u;
        }
        return k;
      }
      switch (p->how) {
        case Plan::How::text:
          return p->text->code.visit([&](const auto& codes) {
            const auto* code = codes.data();
            const std::size_t size = codes.size();
            const std::uint8_t* hit = p->hit.data();
            for (std::size_t i = 0; i < n; ++i) {
              const std::uint32_t s = slots[i];
              slots[k] = s;
              k += s < size ? hit[code[s]] : 0u;
            }
            return k;
          });
        case Plan::How::number: {
          if (!p->range.valid) return 0;
          const double* values = p->number->value_of.data();
          const std::size_t size = p->number->value_of.size();
          const Range r = p->range;
          for (std::size_t i = 0; i < n; ++i) {
            const std::uint32_t s = slots[i];
            slots[k] = s;
            k += s < size && r(values[s]) ? 1u : 0u;
          }
          return k;
        }
        default:
          for (std::size_t i = 0; i < n; ++i) {
            if ((*this)(slots[i])) slots[k++] = slots[i];
          }
          return k;
      }
    }
  };

  SlotTest tester(const Plan& p) const {
    SlotTest t{&p, this, nullptr};
    if (p.how == Plan::How::text && p.text->postings_on && p.hit_values.size() == 1) {
      if (const SlotSet* d = p.text->postings[p.hit_values.front()].dense()) t.words = &d->words();
    }
    return t;
  }

  // The order in which an AND decides its children: the classic rank (cost of deciding a device
  // over the share of devices it rejects) puts cheap, selective tests first. Without candidates,
  // the first child is the one whose collection plus the tests of the others on its matches
  // costs least.
  std::vector<const Plan*> and_order(const Plan& p, bool has_candidates) const {
    std::vector<const Plan*> order;
    for (const auto& c : p.children) order.push_back(&c);
    const double live_n = std::max(1.0, static_cast<double>(slot_of.size()));
    auto rank = [&](const Plan* c) {
      const double rejects = 1.0 - static_cast<double>(c->est) / live_n;
      return c->test_cost / std::max(rejects, 1e-6);
    };
    std::stable_sort(order.begin(), order.end(), [&](const Plan* a, const Plan* b) { return rank(a) < rank(b); });
    if (!has_candidates) {
      double tests = 0;
      for (const Plan* c : order) tests += c->test_cost;
      auto cost = [&](const Plan* c) { return c->collect_cost + static_cast<double>(c->est) * (tests - c->test_cost); };
      auto first = std::min_element(order.begin(), order.end(),
                                    [&](const Plan* a, const Plan* b) { return cost(a) < cost(b); });
      std::rotate(order.begin(), first, first + 1);
    }
    return order;
  }

  static bool is_predicate(const Plan& p) {
    return p.how != Plan::How::all && p.how != Plan::How::conjunction && p.how != Plan::How::disjunction &&
           p.how != Plan::How::negation;
  }

  // Visits every match of a predicate over the whole fleet, each once, without collecting them
  // when it can.
  template <typename F>
  void stream(const Plan& p, F&& f) const {
    switch (p.how) {
      case Plan::How::id_lookup:
        if (p.est == 1) f(p.id_slot);
        return;
      case Plan::How::text:
        if (p.text->postings_on) {
          for (auto v : p.hit_values) p.text->postings[v].for_each(f);
          return;
        }
        p.text->code.visit([&](const auto& codes) {
          for (std::size_t s = 0; s < codes.size(); ++s) {
            if (p.hit[codes[s]] != 0) f(static_cast<std::uint32_t>(s));
          }
        });
        return;
      case Plan::How::number:
        if (p.range.valid) {
          p.number->order.visit(p.rank_from, p.rank_to, false, [&](double, std::uint32_t s) {
            f(s);
            return true;
          });
        }
        return;
      case Plan::How::postings:
        if (p.postings.size() == 1) {
          p.postings.front()->for_each(f);
          return;
        }
        break;
      case Plan::How::nothing: return;
      default: break;
    }
    std::string how;
    collect(p, how).for_each(f);
  }

  // The bitsets whose union is a predicate's matches, when it is a union of at most `most`
  // postings that are all bitsets.
  bool dense_union(const Plan& p, std::size_t most, std::vector<const std::vector<std::uint64_t>*>& out) const {
    out.clear();
    auto take = [&](const Posting& posting) {
      const SlotSet* d = posting.dense();
      if (d == nullptr) return false;
      out.push_back(&d->words());
      return true;
    };
    if (p.how == Plan::How::text && p.text->postings_on) {
      for (auto v : p.hit_values) {
        if (!take(p.text->postings[v])) return false;
      }
    } else if (p.how == Plan::How::postings) {
      for (const Posting* posting : p.postings) {
        if (!take(*posting)) return false;
      }
    } else {
      return false;
    }
    return out.size() <= most;
  }

  // An AND of predicates, counted without building any set. When the child it starts from is a
  // union of bitsets, 64 devices at a time: the words of the children that are bitsets too are
  // ANDed in, and only the devices left are decided one by one by the others. Otherwise the
  // starting child's matches are streamed (a posting, a stretch of the value order) and decided
  // in batches.
  std::optional<std::uint64_t> count_and(const Plan& p) const {
    if (!std::all_of(p.children.begin(), p.children.end(), is_predicate)) return std::nullopt;
    const auto order = and_order(p, false);
    std::array<std::uint32_t, 1024> batch{};
    std::size_t in_batch = 0;
    std::uint64_t n = 0;
    std::vector<SlotTest> tests;
    auto flush = [&] {
      std::size_t k = in_batch;
      for (const auto& t : tests) {
        if (k == 0) break;
        k = t.keep(batch.data(), k);
      }
      n += k;
      in_batch = 0;
    };
    std::vector<const std::vector<std::uint64_t>*> driver, words;
    bool word_mode = dense_union(*order.front(), 8, driver);
    Sel collected;
    if (!word_mode && !sparse_size(order.front()->est, slots())) {
      // Many matches: collected once into a bitset, then handled a word at a time too.
      std::string how;
      collected = collect(*order.front(), how);
      if (collected.dense) {
        driver.assign(1, &collected.bits.words());
        word_mode = true;
      }
    }
    if (word_mode) {
      std::vector<std::vector<const std::vector<std::uint64_t>*>> word_tests;
      for (std::size_t i = 1; i < order.size(); ++i) {
        if (dense_union(*order[i], 2, words)) {
          word_tests.push_back(words);
        } else {
          tests.push_back(tester(*order[i]));
        }
      }
      auto word_of = [](const std::vector<const std::vector<std::uint64_t>*>& sets, std::size_t w) {
        std::uint64_t x = 0;
        for (const auto* set : sets) x |= w < set->size() ? (*set)[w] : 0;
        return x;
      };
      const std::size_t nw = words_for(slots());
      for (std::size_t w = 0; w < nw; ++w) {
        std::uint64_t x = word_of(driver, w);
        for (const auto& t : word_tests) {
          if (x == 0) break;
          x &= word_of(t, w);
        }
        if (x == 0) continue;
        if (tests.empty()) {
          n += popcount64(x);
          continue;
        }
        for (; x != 0; x &= x - 1) {
          batch[in_batch++] = static_cast<std::uint32_t>(w * 64 + static_cast<std::size_t>(__builtin_ctzll(x)));
          if (in_batch == batch.size()) flush();
        }
      }
      flush();
      return n;
    }
    for (std::size_t i = 1; i < order.size(); ++i) tests.push_back(tester(*order[i]));
    stream(*order.front(), [&](std::uint32_t s) {
      batch[in_batch++] = s;
      if (in_batch == batch.size()) flush();
    });
    flush();
    return n;
  }

  // The candidates that match a predicate, testing each.
  Sel filter_predicate(const Plan& p, const Sel& cand) const {
    const std::size_t n = slots();
    switch (p.how) {
      case Plan::How::id_lookup: {
        const bool found = p.est == 1;
        return filter(
            cand, [&](std::uint32_t s) { return found && s == p.id_slot; }, n);
      }
      case Plan::How::id_scan:
        return filter(
            cand, [&](std::uint32_t s) { return query::value_matches(p.node->predicate, slot_id[s], 0); }, n);
      case Plan::How::text: {
        const SlotTest t = tester(p);
        if (t.words != nullptr) return filter(cand, t, n);
        const std::uint8_t* hit = p.hit.data();
        return p.text->code.visit([&](const auto& code) {
          return filter(
              cand, [&](std::uint32_t s) { return s < code.size() && hit[code[s]] != 0; }, n);
        });
      }
      case Plan::How::number: {
        if (!p.range.valid) return {};
        const auto& values = p.number->value_of;
        const Range r = p.range;
        return filter(
            cand, [&](std::uint32_t s) { return s < values.size() && r(values[s]); }, n);
      }
      case Plan::How::postings:
        return filter(
            cand,
            [&](std::uint32_t s) {
              for (const Posting* posting : p.postings) {
                if (posting->test(s)) return true;
              }
              return false;
            },
            n);
      default: return {};
    }
  }

  // Slots matching the plan; only among `cand` when given (the result is then a subset of it).
  Sel exec(const Plan& p, const Sel* cand, int depth, std::vector<std::string>* lines) const {
    const std::size_t n = slots();
    auto line = [&](std::string what, std::uint64_t count) {
      if (lines != nullptr) lines->push_back(fmt::format("{:{}}{} -> {} devices", "", depth * 2, what, count));
    };
    switch (p.how) {
      case Plan::How::all: {
        Sel r = cand != nullptr ? *cand : live_sel();
        line("ALL", r.n);
        return r;
      }
      case Plan::How::negation: {
        std::vector<std::string> sub;
        Sel inner = exec(p.children.front(), cand, depth + 1, lines != nullptr ? &sub : nullptr);
        Sel r = subtract(cand != nullptr ? *cand : live_sel(), inner, n);
        line("NOT", r.n);
        if (lines != nullptr) lines->insert(lines->end(), sub.begin(), sub.end());
        return r;
      }
      case Plan::How::disjunction: {
        std::vector<std::string> sub;
        Sel r;
        for (const auto& c : p.children) r = unite(std::move(r), exec(c, cand, depth + 1, lines ? &sub : nullptr), n);
        line("OR", r.n);
        if (lines != nullptr) lines->insert(lines->end(), sub.begin(), sub.end());
        return r;
      }
      case Plan::How::conjunction: {
        // Most selective first: each child then only decides the devices that passed those
        // before it. Without candidates, the first child is the one whose collection plus the
        // tests of the rest on its matches is cheapest.
        const auto order = and_order(p, cand != nullptr);
        std::vector<std::string> sub;
        Sel acc;
        const Sel* current = cand;
        for (const Plan* c : order) {
          if (current != nullptr && current->n == 0) {
            if (lines != nullptr) {
              sub.push_back(fmt::format("{:{}}{} [skipped: no candidates left] -> 0 devices", "", (depth + 1) * 2,
                                        query::to_string(*c->node)));
            }
            continue;
          }
          acc = exec(*c, current, depth + 1, lines != nullptr ? &sub : nullptr);
          current = &acc;
        }
        line("AND", acc.n);
        if (lines != nullptr) lines->insert(lines->end(), sub.begin(), sub.end());
        return acc;
      }
      default: break;
    }
    // A predicate: with candidates, test them one by one unless collecting every match and
    // intersecting is cheaper.
    std::string how;
    if (cand != nullptr) {
      const double tests = static_cast<double>(cand->n) * p.test_cost;
      const double intersecting = p.collect_cost +
                                  (cand->dense ? static_cast<double>(words_for(n)) / 2 : static_cast<double>(cand->n));
      if (tests <= intersecting) {
        Sel r = filter_predicate(p, *cand);
        line(fmt::format("{} [filtered scan of {} candidates]", query::to_string(*p.node), cand->n), r.n);
        return r;
      }
      Sel all = collect(p, how);
      line(fmt::format("{} [{}]", query::to_string(*p.node), how), all.n);
      return intersect(std::move(all), *cand, n);
    }
    Sel r = collect(p, how);
    line(fmt::format("{} [{}]", query::to_string(*p.node), how), r.n);
    return r;
  }

  Sel eval(const Node& where, std::int64_t now_ms, std::vector<std::string>* lines = nullptr) const {
    return exec(compile(where, now_ms), nullptr, 0, lines);
  }

  // The number of matches when it follows from counts alone, without collecting them.
  std::optional<std::uint64_t> quick_count(const Plan& p) const {
    switch (p.how) {
      case Plan::How::all: return slot_of.size();
      case Plan::How::text:
      case Plan::How::number:
      case Plan::How::id_lookup:
      case Plan::How::nothing: return p.est;
      case Plan::How::postings: {
        if (p.postings.size() == 1) return p.postings.front()->count();
        if (p.postings.empty()) return 0;
        std::vector<const std::vector<std::uint64_t>*> sets;
        if (!dense_union(p, 8, sets)) return std::nullopt;
        std::uint64_t n = 0;
        for (std::size_t w = 0, nw = words_for(slots()); w < nw; ++w) {
          std::uint64_t x = 0;
          for (const auto* set : sets) x |= w < set->size() ? (*set)[w] : 0;
          n += popcount64(x);
        }
        return n;
      }
      case Plan::How::negation:
        if (auto inner = quick_count(p.children.front())) return slot_of.size() - *inner;
        return std::nullopt;
      case Plan::How::conjunction: return count_and(p);
      default: return std::nullopt;
    }
  }

  // Members of `postings` (of one column) among `matching` (all live devices when null),
  // counting a device once however many of them it is in.
  std::uint64_t union_count(const std::vector<const Posting*>& postings, const Sel* matching) const {
    if (postings.empty()) return 0;
    if (postings.size() == 1) {
      const Posting& p = *postings.front();
      if (matching == nullptr) return p.count();
      if (!p.dense()) {
        std::uint64_t c = 0;
        for (auto s : p.sparse()) c += matching->test(s) ? 1 : 0;
        return c;
      }
      if (!matching->dense) {
        std::uint64_t c = 0;
        for (auto s : matching->list) c += p.test(s) ? 1 : 0;
        return c;
      }
      const auto& a = p.dense()->words();
      const auto& b = matching->bits.words();
      std::uint64_t c = 0;
      for (std::size_t w = 0; w < a.size() && w < b.size(); ++w) {
        c += popcount64(a[w] & b[w]);
      }
      return c;
    }
    if (matching != nullptr && !matching->dense) {
      std::uint64_t c = 0;
      for (auto s : matching->list) {
        c += std::any_of(postings.begin(), postings.end(), [&](const Posting* p) { return p->test(s); }) ? 1 : 0;
      }
      return c;
    }
    SlotSet bits;
    bits.resize(slots());
    for (const Posting* p : postings) {
      if (const SlotSet* d = p->dense()) {
        bits.or_with(*d);
      } else {
        set_all(bits, p->sparse());
      }
    }
    if (matching != nullptr) bits.and_with(matching->bits);
    return bits.count();
  }

  std::string value_text(std::uint32_t slot, const std::string& field) const {
    if (field == "id") return slot_id[slot];
    if (auto it = text.find(field); it != text.end()) {
      const auto v = it->second.get(slot);
      return v == 0 ? std::string() : it->second.values[v - 1];
    }
    if (auto it = numbers.find(field); it != numbers.end()) return format_number(it->second.get(slot));
    std::string joined;
    auto add = [&](const std::string& v) {
      if (!joined.empty()) joined += ',';
      joined += v;
    };
    if (field == "software.name") {
      std::vector<const MultiColumn*> seen;
      for (auto e : software_of[slot]) {
        const MultiColumn* c = entries[e].column;
        if (std::find(seen.begin(), seen.end(), c) != seen.end()) continue;
        seen.push_back(c);
        add(c->package);
      }
      return joined;
    }
    const MultiColumn* column = nullptr;
    if (auto it = multi.find(field); it != multi.end()) column = &it->second;
    if (field.starts_with("software.")) {
      if (auto it = software.find(std::string_view(field).substr(9)); it != software.end()) column = &it->second;
    }
    if (column == nullptr) return joined;
    for (auto e : column->package.empty() ? multi_of[slot] : software_of[slot]) {
      if (entries[e].column == column) add(column->values[entries[e].value]);
    }
    return joined;
  }
};

FleetIndex::FleetIndex() : impl_(std::make_unique<Impl>()) {}
FleetIndex::~FleetIndex() = default;
FleetIndex::FleetIndex(FleetIndex&&) noexcept = default;
FleetIndex& FleetIndex::operator=(FleetIndex&&) noexcept = default;

std::size_t FleetIndex::size() const { return impl_->slot_of.size(); }

bool FleetIndex::contains(std::string_view id) const { return impl_->slot_of.contains(id); }

void FleetIndex::upsert(const DeviceFacts& facts) { impl_->apply(facts, std::nullopt); }

void FleetIndex::update(const DeviceFacts& facts, FactPart part) { impl_->apply(facts, part); }

void FleetIndex::update(std::string_view id, std::optional<FactPart> part,
                        const std::function<void(FactSink&)>& produce) {
  Impl::Applier a(*impl_, id, part);
  produce(a);
  a.finish();
}

void FactSink::add_package(std::string_view package, std::string_view version) {
  std::string field;
  field.reserve(9 + package.size());
  field.append("software.").append(package);
  add(field, version);
}

void FleetIndex::erase(std::string_view id) {
  auto& m = *impl_;
  auto it = m.slot_of.find(id);
  if (it == m.slot_of.end()) return;
  const auto slot = it->second;
  m.clear_slot(slot);
  m.live.reset(slot);
  m.slot_id[slot].clear();
  m.slot_id[slot].shrink_to_fit();
  m.free_slots.push_back(slot);
  m.slot_of.erase(it);
}

void FleetIndex::finish_load() {
  for (const auto& [name, c] : impl_->numbers) (void)c.sorted();
}

std::uint64_t FleetIndex::count(const Node& where, std::int64_t now_ms) const {
  const Plan plan = impl_->compile(where, now_ms);
  if (auto n = impl_->quick_count(plan)) return *n;
  return impl_->exec(plan, nullptr, 0, nullptr).n;
}

std::string FleetIndex::explain(const Node& where, std::int64_t now_ms) const {
  std::vector<std::string> plan;
  (void)impl_->eval(where, now_ms, &plan);
  std::string out;
  for (const auto& l : plan) out += l + "\n";
  return out;
}

Result<std::vector<std::pair<std::string, std::uint64_t>>> FleetIndex::count_by(std::string_view field,
                                                                                const Node& where,
                                                                                std::int64_t now_ms) const {
  const auto& m = *impl_;
  auto info = query::find_field(field);
  if (!info) return make_error(Errc::invalid_argument, "unknown field '{}'", field);
  const bool all = where.kind == Node::Kind::all;
  Sel matching;
  if (!all) matching = m.eval(where, now_ms);
  const Sel* within = all ? nullptr : &matching;
  const std::uint64_t total = all ? m.slot_of.size() : matching.n;
  auto each = [&](auto&& f) {
    if (all) {
      m.live.for_each(f);
    } else {
      matching.for_each(f);
    }
  };
  std::vector<std::pair<std::string, std::uint64_t>> out;
  std::uint64_t with_value = 0;  // devices with at least one value
  if (field == "id") {
    each([&](std::uint32_t s) { out.emplace_back(m.slot_id[s], 1); });
    with_value = total;
  } else if (auto it = m.text.find(field); it != m.text.end()) {
    const TextColumn& c = it->second;
    std::vector<std::uint64_t> by_value;
    if (all) {
      by_value.assign(c.counts.begin(), c.counts.end());
    } else {
      std::vector<std::uint64_t> by_code(c.values.size() + 1, 0);
      matching.for_each([&](std::uint32_t s) { ++by_code[c.get(s)]; });
      by_value.assign(by_code.begin() + 1, by_code.end());
    }
    for (std::size_t v = 0; v < by_value.size(); ++v) {
      if (by_value[v] == 0) continue;
      out.emplace_back(c.values[v], by_value[v]);
      with_value += by_value[v];
    }
  } else if (auto nit = m.numbers.find(field); nit != m.numbers.end()) {
    std::unordered_map<double, std::uint64_t> by_value;
    each([&](std::uint32_t s) {
      const double v = nit->second.get(s);
      if (!std::isnan(v)) ++by_value[v];
    });
    for (const auto& [v, n] : by_value) {
      out.emplace_back(format_number(v), n);
      with_value += n;
    }
  } else if (field == "software.name") {
    std::vector<const Posting*> ps;
    for (const auto& [package, versions] : m.software) {
      ps.clear();
      for (auto e : versions.entry) ps.push_back(&m.entries[e].posting);
      if (const auto n = m.union_count(ps, within)) out.emplace_back(package, n);
    }
    each([&](std::uint32_t s) { with_value += m.software_of[s].empty() ? 0 : 1; });
  } else {
    const MultiColumn* column = nullptr;
    if (auto mit = m.multi.find(field); mit != m.multi.end()) column = &mit->second;
    if (field.starts_with("software.")) {
      if (auto sit = m.software.find(field.substr(9)); sit != m.software.end()) column = &sit->second;
    }
    if (column != nullptr) {
      std::vector<const Posting*> ps;
      for (std::size_t v = 0; v < column->values.size(); ++v) {
        const Posting& p = m.entries[column->entry[v]].posting;
        ps.push_back(&p);
        if (const auto n = m.union_count({&p}, within)) out.emplace_back(column->values[v], n);
      }
      with_value = m.union_count(ps, within);
    }
  }
  if (total > with_value) out.emplace_back(std::string(), total - with_value);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  return out;
}

Result<Stats> FleetIndex::stats(std::string_view field, const Node& where, std::int64_t now_ms) const {
  const auto& m = *impl_;
  auto info = query::find_field(field);
  if (!info) return make_error(Errc::invalid_argument, "unknown field '{}'", field);
  Stats st;
  if (!is_number(info->type)) {
    auto by = count_by(field, where, now_ms);
    if (!by) return std::move(by).error();
    for (const auto& [v, n] : *by) {
      if (v.empty()) continue;
      st.count += n;
      ++st.distinct;
    }
    return st;
  }
  auto it = m.numbers.find(field);
  if (it == m.numbers.end()) return st;
  const NumberColumn& c = it->second;
  const bool all = where.kind == Node::Kind::all;
  Sel matching;
  if (!all) matching = m.eval(where, now_ms);
  // The matching values in ascending order: walking the value order and keeping the matching
  // slots costs O(values of the column); collecting the matching values and sorting them costs
  // O(m log m). Take the cheaper.
  std::vector<double> values;
  const Ordered& order = c.sorted();
  const double m_n = static_cast<double>(matching.n);
  if (all || static_cast<double>(order.size()) <= m_n * (2 + log2_of(matching.n))) {
    values.reserve(all ? order.size() : std::min<std::size_t>(order.size(), matching.n));
    order.visit(0, order.size(), false, [&](double v, std::uint32_t s) {
      if (all || matching.test(s)) values.push_back(v);
      return true;
    });
  } else {
    values.reserve(matching.n);
    matching.for_each([&](std::uint32_t s) {
      const double v = c.get(s);
      if (!std::isnan(v)) values.push_back(v);
    });
    std::sort(values.begin(), values.end());
  }
  st.count = values.size();
  if (values.empty()) return st;
  st.min = values.front();
  st.max = values.back();
  st.distinct = 1;
  for (std::size_t i = 0; i < values.size(); ++i) {
    st.sum += values[i];
    if (i > 0 && values[i] != values[i - 1]) ++st.distinct;
  }
  st.avg = st.sum / static_cast<double>(values.size());
  auto rank = [&](double q) {
    const auto i = static_cast<std::size_t>(std::ceil(q * static_cast<double>(values.size())));
    return values[std::min(values.size() - 1, i == 0 ? 0 : i - 1)];
  };
  st.p50 = rank(0.50);
  st.p90 = rank(0.90);
  st.p99 = rank(0.99);
  return st;
}

Result<QueryPage> FleetIndex::query(const Node& where, const QueryOptions& options, std::int64_t now_ms) const {
  const auto& m = *impl_;
  std::string sort_field = "id";
  bool descending = false;
  if (options.sort) {
    auto info = query::find_field(options.sort->field);
    if (!info) return make_error(Errc::invalid_argument, "--sort: unknown field '{}'", options.sort->field);
    if (!info->sortable || info->multi || (info->family && options.sort->field.starts_with("software."))) {
      return make_error(Errc::invalid_argument, "--sort: '{}' has several values per device", options.sort->field);
    }
    sort_field = options.sort->field;
    descending = options.sort->descending;
  }
  for (const auto& f : options.fields) {
    if (f != "id" && !query::find_field(f))
      return make_error(Errc::invalid_argument, "--fields: unknown field '{}'", f);
  }

  // Sort keys: numbers compare numerically, versions by version order, text by bytes; devices
  // without the field come last either way; ties by id.
  const auto num_it = m.numbers.find(sort_field);
  const auto text_it = m.text.find(sort_field);
  const NumberColumn* numeric = num_it != m.numbers.end() ? &num_it->second : nullptr;
  const TextColumn* textual = text_it != m.text.end() ? &text_it->second : nullptr;
  const bool by_id = sort_field == "id";
  const bool version = textual != nullptr && textual->type == FieldType::version;
  // Ranks of the distinct values of a text sort column (equal values share a rank), so rows
  // compare two integers.
  std::vector<std::uint32_t> rank_of_code;
  if (textual != nullptr && textual->values.size() <= kMaxRankedValues) {
    std::vector<std::uint32_t> ids(textual->values.size());
    for (std::uint32_t i = 0; i < ids.size(); ++i) ids[i] = i;
    auto cmp = [&](std::uint32_t a, std::uint32_t b) {
      return version ? query::compare_versions(textual->values[a], textual->values[b])
                     : textual->values[a].compare(textual->values[b]);
    };
    std::sort(ids.begin(), ids.end(), [&](auto a, auto b) { return cmp(a, b) < 0; });
    rank_of_code.assign(ids.size() + 1, 0);
    std::uint32_t r = 0;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (i > 0 && cmp(ids[i - 1], ids[i]) != 0) ++r;
      rank_of_code[ids[i] + 1] = r;
    }
  }
  struct Row {
    std::uint32_t slot;
    double number;
    std::uint32_t code;  // text: value id + 1; 0: absent
  };
  auto make_row = [&](std::uint32_t s) {
    Row r{s, kAbsent, 0};
    if (numeric != nullptr) r.number = numeric->get(s);
    else if (textual != nullptr) r.code = textual->get(s);
    return r;
  };
  auto absent = [&](const Row& r) {
    if (numeric != nullptr) return std::isnan(r.number);
    if (textual != nullptr) return r.code == 0;
    return !by_id;  // a field no device has
  };
  auto less = [&](const Row& a, const Row& b) {
    const bool aa = absent(a), ba = absent(b);
    if (aa != ba) return ba;  // present before absent
    if (!aa) {
      int c = 0;
      if (numeric != nullptr) {
        c = a.number < b.number ? -1 : (a.number > b.number ? 1 : 0);
      } else if (by_id) {
        c = m.slot_id[a.slot].compare(m.slot_id[b.slot]);
      } else if (textual != nullptr) {
        if (!rank_of_code.empty()) {
          c = rank_of_code[a.code] < rank_of_code[b.code] ? -1 : (rank_of_code[a.code] > rank_of_code[b.code] ? 1 : 0);
        } else {
          const auto& va = textual->values[a.code - 1];
          const auto& vb = textual->values[b.code - 1];
          c = version ? query::compare_versions(va, vb) : va.compare(vb);
        }
      }
      if (c != 0) return descending ? c > 0 : c < 0;
    }
    return m.slot_id[a.slot] < m.slot_id[b.slot];
  };

  std::optional<Row> after;
  if (!options.cursor.empty()) {
    auto it = m.slot_of.find(options.cursor);
    if (it == m.slot_of.end()) {
      return make_error(Errc::invalid_argument, "cursor '{}' names no device (it was deleted; start again)",
                        options.cursor);
    }
    after = make_row(it->second);
  }

  const Sel matching = where.kind == Node::Kind::all ? m.live_sel() : m.eval(where, now_ms);
  QueryPage page;
  page.total = matching.n;
  const std::size_t limit = std::max<std::uint32_t>(1, options.limit);
  const std::size_t want = limit + 1;  // one more than the page tells whether another follows
  std::vector<Row> rows;

  // Without building a row for every match: along the value order of a number column when the
  // matches are dense enough that `want` of them come soon, else a bounded heap.
  const bool walk = numeric != nullptr && static_cast<double>(want) * static_cast<double>(m.slot_of.size()) <
                                              static_cast<double>(matching.n) * static_cast<double>(matching.n);
  if (walk) {
    const Ordered& order = numeric->sorted();
    std::size_t from = 0, to = order.size();
    if (after && !std::isnan(after->number)) {
      if (descending) to = order.rank(after->number, true);
      else from = order.rank(after->number, false);
    } else if (after) {
      from = to;  // the cursor has no value: every device with one sorts before it
    }
    double boundary = kAbsent;
    order.visit(from, to, descending, [&](double v, std::uint32_t s) {
      if (rows.size() >= want && v != boundary) return false;  // past the ties of the last row
      if (!matching.test(s)) return true;
      const Row r{s, v, 0};
      if (after && !less(*after, r)) return true;
      rows.push_back(r);
      if (rows.size() == want) boundary = v;
      return true;
    });
    if (rows.size() < want) {
      std::vector<Row> missing;
      matching.for_each([&](std::uint32_t s) {
        if (!std::isnan(numeric->get(s))) return;
        const Row r{s, kAbsent, 0};
        if (!after || less(*after, r)) missing.push_back(r);
      });
      const std::size_t take = std::min(missing.size(), want - rows.size());
      std::partial_sort(missing.begin(), missing.begin() + static_cast<std::ptrdiff_t>(take), missing.end(), less);
      rows.insert(rows.end(), missing.begin(), missing.begin() + static_cast<std::ptrdiff_t>(take));
    }
    std::sort(rows.begin(), rows.end(), less);
  } else if (want >= matching.n) {
    rows.reserve(matching.n);
    matching.for_each([&](std::uint32_t s) {
      const Row r = make_row(s);
      if (!after || less(*after, r)) rows.push_back(r);
    });
    std::sort(rows.begin(), rows.end(), less);
  } else {
    rows.reserve(want);
    matching.for_each([&](std::uint32_t s) {
      const Row r = make_row(s);
      if (after && !less(*after, r)) return;
      if (rows.size() < want) {
        rows.push_back(r);
        std::push_heap(rows.begin(), rows.end(), less);
      } else if (less(r, rows.front())) {
        std::pop_heap(rows.begin(), rows.end(), less);
        rows.back() = r;
        std::push_heap(rows.begin(), rows.end(), less);
      }
    });
    std::sort_heap(rows.begin(), rows.end(), less);
  }

  const std::size_t take = std::min(limit, rows.size());
  const auto& projection = options.fields.empty() ? kDefaultProjection : options.fields;
  for (std::size_t i = 0; i < take; ++i) {
    QueryRow out;
    out.id = m.slot_id[rows[i].slot];
    for (const auto& f : projection) out.values.emplace_back(f, m.value_text(rows[i].slot, f));
    page.rows.push_back(std::move(out));
  }
  // The cursor is the last device of the page: keyset pagination stays correct while devices
  // change around it (as long as that device still exists).
  if (rows.size() > take) page.next_cursor = page.rows.back().id;
  return page;
}

std::optional<DeviceFacts> FleetIndex::facts(std::string_view id) const {
  const auto& m = *impl_;
  auto it = m.slot_of.find(id);
  if (it == m.slot_of.end()) return std::nullopt;
  const auto slot = it->second;
  DeviceFacts f;
  f.id = std::string(id);
  for (const auto& [name, c] : m.text) {
    if (const auto v = c.get(slot); v != 0) f.values.emplace_back(name, c.values[v - 1]);
  }
  for (const auto& [name, c] : m.numbers) {
    if (const double v = c.get(slot); !std::isnan(v)) f.values.emplace_back(name, format_number(v));
  }
  for (const auto* list : {&m.multi_of[slot], &m.software_of[slot]}) {
    for (auto e : *list) {
      const Entry& entry = m.entries[e];
      f.values.emplace_back(entry.column->field, entry.column->values[entry.value]);
    }
  }
  return f;
}

namespace {

constexpr std::string_view kSnapshotMagic = "flotilla fleet index snapshot";
constexpr std::uint32_t kSnapshotFormat = 1;

// A 64-bit checksum of a byte stream, 8 bytes at a time whatever the pieces it arrives in.
class StreamHash {
 public:
  void update(const void* data, std::size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    while (n > 0 && pending_ > 0) {
      add_byte(*p++);
      --n;
    }
    for (; n >= 8; n -= 8, p += 8) {
      std::uint64_t w = 0;
      std::memcpy(&w, p, 8);
      mix(w);
    }
    for (; n > 0; --n) add_byte(*p++);
  }
  std::uint64_t digest() const {
    std::uint64_t h = h_ ^ (buffer_ * 0x9e3779b97f4a7c15ULL) ^ total_;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
  }

 private:
  void add_byte(unsigned char b) {
    buffer_ |= static_cast<std::uint64_t>(b) << (8 * pending_);
    if (++pending_ == 8) {
      mix(buffer_);
      buffer_ = 0;
      pending_ = 0;
    }
  }
  void mix(std::uint64_t w) {
    h_ ^= w * 0x87c37b91114253d5ULL;
    h_ = ((h_ << 31) | (h_ >> 33)) * 0x4cf5ad432745937fULL;
    total_ += 8;
  }
  std::uint64_t h_ = 0x243f6a8885a308d3ULL, buffer_ = 0, total_ = 0;
  unsigned pending_ = 0;
};

class SnapshotWriter {
 public:
  explicit SnapshotWriter(std::FILE* f) : f_(f) {}
  void bytes(const void* p, std::size_t n) {
    if (n == 0) return;
    hash_.update(p, n);
    if (ok_ && std::fwrite(p, 1, n, f_) != n) ok_ = false;
  }
  void u8(std::uint8_t v) { bytes(&v, 1); }
  void u32(std::uint32_t v) { bytes(&v, sizeof v); }
  void u64(std::uint64_t v) { bytes(&v, sizeof v); }
  void str(std::string_view v) {
    u64(v.size());
    bytes(v.data(), v.size());
  }
  template <typename T>
  void vec(const std::vector<T>& v) {
    u64(v.size());
    bytes(v.data(), v.size() * sizeof(T));
  }
  void posting(const Posting& p) {
    u8(p.is_dense() ? 1 : 0);
    u64(p.count());
    if (p.is_dense()) {
      vec(p.words());
    } else {
      vec(p.sparse());
    }
  }
  // Per-slot lists as offsets and one array.
  void lists(const std::vector<std::vector<std::uint32_t>>& lists) {
    u64(lists.size());
    std::uint64_t total = 0;
    for (const auto& l : lists) total += l.size();
    u64(total);
    for (const auto& l : lists) u32(static_cast<std::uint32_t>(l.size()));
    for (const auto& l : lists) bytes(l.data(), l.size() * sizeof(std::uint32_t));
  }
  Status finish() {
    const std::uint64_t digest = hash_.digest();
    if (ok_ && std::fwrite(&digest, 1, sizeof digest, f_) != sizeof digest) ok_ = false;
    if (!ok_ || std::fflush(f_) != 0) return make_error(Errc::io_error, "index snapshot: write failed");
    return {};
  }

 private:
  std::FILE* f_;
  StreamHash hash_;
  bool ok_ = true;
};

// Reads what SnapshotWriter wrote; every size is checked against the bytes left before anything
// is allocated, so a damaged file fails cleanly.
class SnapshotReader {
 public:
  SnapshotReader(std::FILE* f, std::uint64_t size) : f_(f), left_(size) {}
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  void fail(std::string what) {
    if (error_.empty()) error_ = std::move(what);
  }
  bool bytes(void* p, std::size_t n) {
    if (!ok()) return false;
    if (n > left_) {
      fail("truncated");
      return false;
    }
    if (n > 0 && std::fread(p, 1, n, f_) != n) {
      fail("read failed");
      return false;
    }
    left_ -= n;
    hash_.update(p, n);
    return true;
  }
  std::uint8_t u8() {
    std::uint8_t v = 0;
    bytes(&v, 1);
    return v;
  }
  std::uint32_t u32() {
    std::uint32_t v = 0;
    bytes(&v, sizeof v);
    return v;
  }
  std::uint64_t u64() {
    std::uint64_t v = 0;
    bytes(&v, sizeof v);
    return v;
  }
  // A count of items of at least `item` bytes each that the rest of the file can hold.
  std::uint64_t count(std::size_t item) {
    const std::uint64_t n = u64();
    if (ok() && n > left_ / std::max<std::size_t>(1, item)) fail("a count larger than the file");
    return ok() ? n : 0;
  }
  std::string str() {
    std::string s(count(1), '\0');
    bytes(s.data(), s.size());
    return s;
  }
  template <typename T>
  std::vector<T> vec() {
    std::vector<T> v(count(sizeof(T)));
    bytes(v.data(), v.size() * sizeof(T));
    return v;
  }
  Posting posting(std::size_t slots) {
    const bool dense = u8() != 0;
    const std::uint64_t n = u64();
    std::vector<std::uint32_t> sparse;
    std::vector<std::uint64_t> words;
    if (dense) {
      words = vec<std::uint64_t>();
      std::uint64_t bits = 0;
      for (auto w : words) bits += popcount64(w);
      if (bits != n || words.size() > words_for(slots)) fail("a posting does not match its count");
    } else {
      sparse = vec<std::uint32_t>();
      if (sparse.size() != n || !std::is_sorted(sparse.begin(), sparse.end()) ||
          (!sparse.empty() && sparse.back() >= slots)) {
        fail("a posting is out of order or out of range");
      }
    }
    return Posting::restore(std::move(sparse), std::move(words), dense, n);
  }
  std::vector<std::vector<std::uint32_t>> lists(std::size_t slots, std::size_t limit) {
    const std::uint64_t n = count(sizeof(std::uint32_t));
    const std::uint64_t total = count(sizeof(std::uint32_t));
    if (n != slots) fail("per-slot lists of another fleet size");
    std::vector<std::uint32_t> sizes(ok() ? n : 0);
    bytes(sizes.data(), sizes.size() * sizeof(std::uint32_t));
    std::uint64_t sum = 0;
    for (auto s : sizes) sum += s;
    if (sum != total) fail("per-slot lists do not add up");
    std::vector<std::vector<std::uint32_t>> out(ok() ? n : 0);
    for (std::size_t i = 0; i < out.size() && ok(); ++i) {
      out[i].resize(sizes[i]);
      bytes(out[i].data(), sizes[i] * sizeof(std::uint32_t));
      for (auto e : out[i]) {
        if (e >= limit) fail("a per-slot entry out of range");
      }
    }
    return out;
  }
  // Reads the trailing checksum and compares it with what was read.
  void finish() {
    const std::uint64_t digest = hash_.digest();
    std::uint64_t stored = 0;
    if (!ok()) return;
    if (left_ != sizeof stored || std::fread(&stored, 1, sizeof stored, f_) != sizeof stored) {
      fail("no checksum at the end");
    } else if (stored != digest) {
      fail("checksum mismatch");
    }
  }

 private:
  std::FILE* f_;
  std::uint64_t left_;
  StreamHash hash_;
  std::string error_;
};

std::uint8_t part_byte(FactPart p) { return static_cast<std::uint8_t>(p); }
std::uint8_t type_byte(FieldType t) { return static_cast<std::uint8_t>(t); }

}  // namespace

Status FleetIndex::write_snapshot(std::FILE* out) const {
  const auto& m = *impl_;
  SnapshotWriter w(out);
  w.str(kSnapshotMagic);
  w.u32(kSnapshotFormat);
  w.u64(m.slot_id.size());
  for (const auto& id : m.slot_id) w.str(id);
  w.vec(m.free_slots);
  w.vec(m.live.words());
  w.u64(m.text.size());
  for (const auto& [name, c] : m.text) {
    w.str(name);
    w.u8(type_byte(c.type));
    w.u8(part_byte(c.part));
    w.u8(static_cast<std::uint8_t>(c.code.width()));
    c.code.visit([&](const auto& v) { w.vec(v); });
    w.u64(c.values.size());
    for (const auto& v : c.values) w.str(v);
    w.vec(c.counts);
    w.u8(c.postings_on ? 1 : 0);
    w.u64(c.present);
    if (c.postings_on) {
      for (const auto& p : c.postings) w.posting(p);
    }
  }
  w.u64(m.numbers.size());
  std::vector<double> values;
  std::vector<std::uint32_t> slots;
  for (const auto& [name, c] : m.numbers) {
    w.str(name);
    w.u8(type_byte(c.type));
    w.u8(part_byte(c.part));
    w.vec(c.value_of);
    w.u64(c.present);
    c.sorted().flatten(values, slots);  // stored, so that loading need not sort
    w.vec(values);
    w.vec(slots);
  }
  // Multi-valued columns, then software columns, numbered in that order for the entries.
  std::map<const MultiColumn*, std::uint32_t> number_of;
  for (const auto* columns : {&m.multi, &m.software}) {
    w.u64(columns->size());
    for (const auto& [key, c] : *columns) {
      number_of.emplace(&c, static_cast<std::uint32_t>(number_of.size()));
      w.str(key);
      w.str(c.field);
      w.str(c.package);
      w.u8(part_byte(c.part));
      w.u64(c.values.size());
      for (const auto& v : c.values) w.str(v);
      w.vec(c.entry);
    }
  }
  w.u64(m.entries.size());
  for (const auto& e : m.entries) {
    w.u32(number_of.at(e.column));
    w.u32(e.value);
    w.posting(e.posting);
  }
  w.lists(m.multi_of);
  w.lists(m.software_of);
  return w.finish();
}

Result<FleetIndex> FleetIndex::read_snapshot(std::FILE* in, std::uint64_t size) {
  FleetIndex index;
  auto& m = *index.impl_;
  SnapshotReader r(in, size);
  auto bad = [&]() { return make_error(Errc::corruption, "index snapshot: {}", r.error()); };
  if (r.str() != kSnapshotMagic || r.u32() != kSnapshotFormat) r.fail("not a snapshot of this format");
  const std::uint64_t slots = r.count(sizeof(std::uint64_t));
  if (slots >= std::numeric_limits<std::uint32_t>::max()) r.fail("too many slots");
  if (!r.ok()) return bad();
  m.slot_id.resize(slots);
  for (auto& id : m.slot_id) id = r.str();
  m.free_slots = r.vec<std::uint32_t>();
  m.live.words() = r.vec<std::uint64_t>();
  if (!r.ok()) return bad();
  if (m.live.words().size() > words_for(slots)) r.fail("live set larger than the fleet");
  for (auto s : m.free_slots) {
    if (s >= slots || m.live.test(s) || !m.slot_id[s].empty()) r.fail("a free slot in use");
  }
  // The id -> slot map is built on a second thread while the rest is read (nothing below touches
  // the ids or the map until the join).
  bool unique_ids = true;
  std::thread ids_thread([&m, &unique_ids, slots] {
    m.slot_of.reserve(slots);
    for (std::uint32_t s = 0; s < slots; ++s) {
      if (m.live.test(s) && !m.slot_of.emplace(m.slot_id[s], s).second) unique_ids = false;
    }
  });
  struct Join {
    explicit Join(std::thread& thread) : t(thread) {}
    std::thread& t;
    Join(const Join&) = delete;
    Join& operator=(const Join&) = delete;
    ~Join() {
      if (t.joinable()) t.join();
    }
  } join{ids_thread};
  auto read_part = [&]() {
    const auto p = r.u8();
    if (p > 2) r.fail("a column of no part");
    return static_cast<FactPart>(p);
  };
  auto read_type = [&]() {
    const auto t = r.u8();
    if (t > type_byte(FieldType::time)) r.fail("a column of no type");
    return static_cast<FieldType>(t);
  };
  for (std::uint64_t n = r.count(1); n > 0 && r.ok(); --n) {
    auto [it, inserted] = m.text.try_emplace(r.str());
    if (!inserted) r.fail("a text column twice");
    TextColumn& c = it->second;
    c.type = read_type();
    c.part = read_part();
    const auto width = r.u8();
    c.code.set_width(width);
    if (width == 1) {
      c.code.b8() = r.vec<std::uint8_t>();
    } else if (width == 2) {
      c.code.b16() = r.vec<std::uint16_t>();
    } else if (width == 4) {
      c.code.b32() = r.vec<std::uint32_t>();
    } else {
      r.fail("a text column of no width");
    }
    c.values.resize(r.count(sizeof(std::uint64_t)));
    for (auto& v : c.values) v = r.str();
    c.counts = r.vec<std::uint64_t>();
    c.postings_on = r.u8() != 0;
    c.present = r.u64();
    if (c.postings_on) {
      c.postings.reserve(c.values.size());
      for (std::size_t v = 0; v < c.values.size() && r.ok(); ++v) c.postings.push_back(r.posting(slots));
    }
    if (c.counts.size() != c.values.size() || c.code.size() > slots) r.fail("a text column of inconsistent sizes");
    c.code.visit([&](const auto& codes) {
      for (auto code : codes) {
        if (code > c.values.size()) r.fail("a text value out of range");
      }
    });
    c.ids.reserve(c.values.size());
    for (std::uint32_t v = 0; v < c.values.size() && r.ok(); ++v) c.ids.emplace(c.values[v], v);
    m.text_parts[static_cast<std::size_t>(c.part)].push_back(&c);
  }
  std::vector<double> values;
  std::vector<std::uint32_t> order_slots;
  for (std::uint64_t n = r.count(1); n > 0 && r.ok(); --n) {
    auto [it, inserted] = m.numbers.try_emplace(r.str());
    if (!inserted) r.fail("a number column twice");
    NumberColumn& c = it->second;
    c.type = read_type();
    c.part = read_part();
    c.value_of = r.vec<double>();
    c.present = r.u64();
    values = r.vec<double>();
    order_slots = r.vec<std::uint32_t>();
    if (c.value_of.size() > slots || values.size() != order_slots.size() || values.size() != c.present) {
      r.fail("a number column of inconsistent sizes");
    }
    for (std::size_t i = 0; i < values.size() && r.ok(); ++i) {
      if (order_slots[i] >= c.value_of.size() || !(c.value_of[order_slots[i]] == values[i]) ||
          (i > 0 &&
           (values[i] < values[i - 1] || (values[i] == values[i - 1] && order_slots[i] <= order_slots[i - 1])))) {
        r.fail("a value order that does not match its column");
      }
    }
    c.order.assign_sorted(values, order_slots);
    c.ordered = true;
    m.number_parts[static_cast<std::size_t>(c.part)].push_back(&c);
  }
  std::vector<MultiColumn*> columns;
  for (auto* map : {&m.multi, &m.software}) {
    for (std::uint64_t n = r.count(1); n > 0 && r.ok(); --n) {
      auto [it, inserted] = map->try_emplace(r.str());
      MultiColumn& c = it->second;
      c.field = r.str();
      c.package = r.str();
      c.part = read_part();
      if (!inserted || c.package.empty() != (map == &m.multi)) r.fail("a multi-valued column twice or misplaced");
      c.values.resize(r.count(sizeof(std::uint64_t)));
      for (auto& v : c.values) v = r.str();
      c.entry = r.vec<std::uint32_t>();
      if (c.entry.size() != c.values.size()) r.fail("a multi-valued column of inconsistent sizes");
      if (c.values.size() > kLinearDictionary) {
        for (std::uint32_t v = 0; v < c.values.size(); ++v) c.ids.emplace(c.values[v], v);
      }
      columns.push_back(&c);
    }
  }
  const std::uint64_t entries = r.count(2 * sizeof(std::uint32_t));
  m.entries.reserve(entries);
  for (std::uint64_t e = 0; e < entries && r.ok(); ++e) {
    const std::uint32_t column = r.u32();
    const std::uint32_t value = r.u32();
    Posting p = r.posting(slots);
    if (column >= columns.size() || value >= columns[column]->values.size() || columns[column]->entry[value] != e) {
      r.fail("an entry of no column");
      break;
    }
    m.entries.push_back({columns[column], value, std::move(p)});
  }
  m.multi_of = r.lists(slots, m.entries.size());
  m.software_of = r.lists(slots, m.entries.size());
  r.finish();
  ids_thread.join();
  if (!unique_ids) r.fail("a device id twice");
  if (!r.ok()) return bad();
  return index;
}

std::pair<std::size_t, std::size_t> FleetIndex::memory_bytes() const {
  const auto& m = *impl_;
  std::size_t software = 0, other = 0;
  for (const auto& [p, c] : m.software) software += c.bytes() + p.capacity() + 64;
  for (const auto& e : m.entries) (e.column->package.empty() ? other : software) += e.posting.bytes() + sizeof(Entry);
  constexpr std::size_t kList = sizeof(std::vector<std::uint32_t>);
  for (const auto& v : m.software_of) software += v.capacity() * sizeof(std::uint32_t) + kList;
  for (const auto& v : m.multi_of) other += v.capacity() * sizeof(std::uint32_t) + kList;
  for (const auto& [n, c] : m.text) other += c.bytes();
  for (const auto& [n, c] : m.numbers) other += c.bytes();
  for (const auto& [n, c] : m.multi) other += c.bytes();
  for (const auto& id : m.slot_id) other += id.capacity() + sizeof(std::string);
  other += m.slot_of.size() * (sizeof(std::string) + 32 + 24) + m.live.bytes();
  return {software, other};
}

}  // namespace flotilla::manager
