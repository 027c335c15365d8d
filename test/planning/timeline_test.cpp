#include <doctest/doctest.h>

#include <stdexcept>

#include "planning/task_graph.hpp"
#include "planning/timeline.hpp"

using namespace orrery::planning;

namespace {

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
    ++n;
  return n;
}

}  // namespace

TEST_CASE("task graphs serialise a resource and honour precedence and delays") {
  task_graph g;
  std::size_t cpu = g.add_resource("cpu"), net = g.add_resource("net <1>");
  std::size_t a = g.add_task(cpu, 1.0, {}, 0, "a", 0);
  std::size_t b = g.add_task(cpu, 2.0, {}, 0, "b", 1);
  std::size_t send = g.add_task(net, 0.5, {a}, 0.25, "send", 0);
  std::size_t c = g.add_task(cpu, 1.0, {send}, 0, "c", 0);
  schedule s = g.run();
  CHECK(s.spans[a].start == 0);
  CHECK(s.spans[b].start == 1.0);            // the cpu is busy with a
  CHECK(s.spans[send].start == 1.0);
  CHECK(s.spans[c].start == 3.0);            // ready at 1.75, the cpu frees at 3
  CHECK(s.makespan == 4.0);
  CHECK(s.busy(cpu) == 4.0);
  CHECK_THROWS_AS(g.add_task(cpu, 1.0, {99}), std::logic_error);

  std::string svg = timeline_svg(s, "test & check");
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(count(svg, "<rect") == 4);
  CHECK(svg.find("net &lt;1&gt;") != std::string::npos);
  CHECK(svg.find("test &amp; check") != std::string::npos);
}
