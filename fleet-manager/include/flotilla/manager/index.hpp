#pragma once
// The fleet index: every device's queryable facts in memory, organised for fast answers at a
// million devices. Rebuilt from the Store at start-up and updated in the reactor right after each
// batch commits, so a query answered after an acknowledged write always sees it. Owned by the
// manager's reactor thread; not thread-safe (not even two const calls at once: the value order of
// a number column is built by the first query that needs it).
//
// Layout: each device has a dense slot. Text-like fields are dictionary-encoded columns
// (slot -> value id) with a count and a posting (the slots holding it) per distinct value, so
// equality, wildcard, version ranges and group-by work on distinct values instead of devices;
// fields with too many distinct values for postings (serials, hostnames) keep the column only.
// Numbers and times are columns of doubles plus a value order: their (value, slot) pairs sorted
// in chunks, so a range costs a binary search to count and O(matches) to collect. Multi-valued
// fields (tags, groups, installed software) keep a posting per value and, per slot, the list of
// postings it is in. docs/query.md ("How queries are answered") describes the planner.

#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "flotilla/manager/query.hpp"
#include "flotilla/manager/query_eval.hpp"

namespace flotilla::manager {

// All queryable values of one device as (field, value) pairs; numbers and times as decimal text.
struct DeviceFacts {
  std::string id;
  std::vector<std::pair<std::string, std::string>> values;
};

// Receives the facts of one device one at a time (numbers and times as decimal text); the
// strings need only live during the call. facts.hpp writes a device's stored data into one, the
// index reads from one, so a device's facts need not be built as strings in between.
class FactSink {
 public:
  virtual ~FactSink() = default;
  virtual void add(std::string_view field, std::string_view value) = 0;
  // The fact software.<package> = version.
  virtual void add_package(std::string_view package, std::string_view version);
};

// Appends every fact to a DeviceFacts.
class DeviceFactsSink final : public FactSink {
 public:
  explicit DeviceFactsSink(DeviceFacts& out) : out_(out) {}
  void add(std::string_view field, std::string_view value) override { out_.values.emplace_back(field, value); }

 private:
  DeviceFacts& out_;
};

// Facts come in three parts that change at different rates: the registry record (presence,
// labels), the inventory (rarely) and the latest telemetry (every reading).
enum class FactPart { record, inventory, telemetry };
FactPart part_of(std::string_view field);

// A set of slots as a dense bitset.
class SlotSet {
 public:
  void resize(std::size_t slots) { words_.resize((slots + 63) / 64, 0); }
  void set(std::uint32_t slot);
  void reset(std::uint32_t slot);
  bool test(std::uint32_t slot) const;
  std::uint64_t count() const;
  void and_with(const SlotSet& other);
  void or_with(const SlotSet& other);
  void and_not(const SlotSet& other);
  // Calls f(slot) for every member in increasing order.
  template <typename F>
  void for_each(F&& f) const {
    for (std::size_t w = 0; w < words_.size(); ++w) {
      std::uint64_t bits = words_[w];
      while (bits != 0) {
        const int b = __builtin_ctzll(bits);
        f(static_cast<std::uint32_t>(w * 64 + static_cast<std::size_t>(b)));
        bits &= bits - 1;
      }
    }
  }
  std::size_t bytes() const { return words_.size() * sizeof(std::uint64_t); }
  // The bits, 64 slots per word, slot 0 in bit 0 of word 0; may be shorter than the fleet.
  const std::vector<std::uint64_t>& words() const { return words_; }
  std::vector<std::uint64_t>& words() { return words_; }

 private:
  std::vector<std::uint64_t> words_;
};

struct SortKey {
  std::string field;
  bool descending = false;
};

struct QueryOptions {
  std::optional<SortKey> sort;  // default: by id
  std::uint32_t limit = 100;
  std::string cursor;               // opaque, from a previous page
  std::vector<std::string> fields;  // projection; empty: the default summary fields
};

struct QueryRow {
  std::string id;
  std::vector<std::pair<std::string, std::string>> values;  // projected fields
};

struct QueryPage {
  std::vector<QueryRow> rows;
  std::uint64_t total = 0;  // matches of the whole query
  std::string next_cursor;  // empty on the last page
};

struct Stats {
  std::uint64_t count = 0;  // devices with a numeric value for the field
  double min = 0, max = 0, sum = 0, avg = 0;
  double p50 = 0, p90 = 0, p99 = 0;
  std::uint64_t distinct = 0;
};

class FleetIndex {
 public:
  FleetIndex();
  ~FleetIndex();
  FleetIndex(FleetIndex&&) noexcept;
  FleetIndex& operator=(FleetIndex&&) noexcept;

  // Inserts or replaces all of a device's facts.
  void upsert(const DeviceFacts& facts);
  // Replaces one part of a device's facts (the device is created when new).
  void update(const DeviceFacts& facts, FactPart part);
  // Replaces one part of the facts of device `id` (every part when `part` is empty; the device is
  // created when new) with the facts `produce` passes to the sink it is given. Facts of other
  // parts are ignored, as in the two above.
  void update(std::string_view id, std::optional<FactPart> part, const std::function<void(FactSink&)>& produce);
  void erase(std::string_view id);
  std::size_t size() const;
  bool contains(std::string_view id) const;
  // Builds now what the first query touching each number or time column would otherwise build
  // (its value order). Call once after loading many devices, so that no query pays for it.
  void finish_load();

  // Devices matching the query. Errors: invalid_argument (e.g. sorting by a multi-valued field,
  // a bad cursor).
  Result<QueryPage> query(const query::Node& where, const QueryOptions& options, std::int64_t now_ms) const;
  std::uint64_t count(const query::Node& where, std::int64_t now_ms) const;
  // Count of matching devices per value of `field` (devices without the field count under "").
  Result<std::vector<std::pair<std::string, std::uint64_t>>> count_by(std::string_view field, const query::Node& where,
                                                                      std::int64_t now_ms) const;
  // Statistics of a numeric or time field over matching devices; `distinct` works for any field.
  Result<Stats> stats(std::string_view field, const query::Node& where, std::int64_t now_ms) const;
  // The plan: how each node of the query is answered and how many devices it matched.
  std::string explain(const query::Node& where, std::int64_t now_ms) const;
  // Reference view of one device (for groups explain and tests); nullopt when unknown.
  std::optional<DeviceFacts> facts(std::string_view id) const;

  // Writes the whole index to `out` (the start-up snapshot of index_load.hpp), ending with a
  // checksum. Errors: io_error.
  Status write_snapshot(std::FILE* out) const;
  // Reads back what write_snapshot() wrote, `size` bytes from `in`. Errors: corruption (another
  // format, a checksum mismatch, a value out of range), io_error.
  static Result<FleetIndex> read_snapshot(std::FILE* in, std::uint64_t size);

  // Approximate memory in bytes, split into software inventory and everything else.
  std::pair<std::size_t, std::size_t> memory_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flotilla::manager
