#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "planning/profile.hpp"
#include "planning/random_profile.hpp"

using namespace orrery::planning;
using nlohmann::json;

namespace {

profile sample_profile() {
  std::mt19937_64 rng(1);
  return random_profile(rng, {5, 3, 1.0, 2.0});
}

std::string error_of(const json& j) {
  try {
    profile_from_json(j);
  } catch (const profile_error& e) {
    return e.what();
  }
  return "";
}

std::string temp_path(const std::string& name) {
  return "/tmp/orrery_profile_test_" + name;
}

}  // namespace

TEST_CASE("time curves interpolate, stay flat below the first point, extrapolate a rising cost above the last and hold a falling one") {
  time_curve c({{100, 2.0}, {10, 1.0}});
  CHECK(c.at(10) == doctest::Approx(1.0));
  CHECK(c.at(55) == doctest::Approx(1.5));
  CHECK(c.at(190) == doctest::Approx(3.0));
  CHECK(c.at(0) == doctest::Approx(1.0));
  // Falling between the measurements: flat past the last one, never down to zero.
  time_curve falling({{12, 3.8e-3}, {36, 2.3e-3}});
  CHECK(falling.at(24) == doctest::Approx(3.05e-3));
  CHECK(falling.at(80) == doctest::Approx(2.3e-3));
  CHECK(falling.at(1e6) == doctest::Approx(2.3e-3));
  CHECK(time_curve::constant(0.5).at(1e6) == 0.5);
}

TEST_CASE("links are symmetric, with a default, and free to the same device") {
  link_matrix links({100, 0.5});
  links.set(2, 0, {50, 0});
  CHECK(links.between(0, 2).bandwidth == 50);
  CHECK(links.between(1, 2).bandwidth == 100);
  CHECK(links.transfer_seconds(1, 2, 100) == doctest::Approx(1.5));
  CHECK(links.transfer_seconds(1, 1, 100) == 0);
}

TEST_CASE("a profile survives JSON and YAML round trips") {
  profile p = sample_profile();
  p.devices[1].state_scale = 0.5;
  json j = to_json(p);
  CHECK(j["devices"][1]["state_scale"] == 0.5);
  CHECK_FALSE(j["devices"][0].contains("state_scale"));  // 1, the default, is left out
  CHECK(to_json(profile_from_json(j)) == j);
  for (const std::string name : {"p.json", "p.yaml"}) {
    save_profile(p, temp_path(name));
    CHECK(to_json(load_profile(temp_path(name))) == j);
    std::remove(temp_path(name).c_str());
  }
}

TEST_CASE("a burst from idle runs on its measured points, at the sustained pace past them, never slower than sustained") {
  burst_speed none;
  CHECK(none.wall_seconds(0.02) == 0.02);  // not measured: the sustained time
  // Steps of 1 ms of full-speed work: the first two at full speed, then a quota's half speed.
  burst_speed b{{{0.001, 0.001}, {0.002, 0.002}, {0.003, 0.004}, {0.004, 0.006}}, 2.0};
  CHECK(b.wall_seconds(0.001) == doctest::Approx(0.0005));   // half a step of work
  CHECK(b.wall_seconds(0.004) == doctest::Approx(0.002));    // 2 ms of work, at full speed
  CHECK(b.wall_seconds(0.005) == doctest::Approx(0.003));    // 2.5 ms: halfway up the third step
  CHECK(b.wall_seconds(0.012) == doctest::Approx(0.010));    // 6 ms: 2 past the points at 2x
  // A burst measured slower than the sustained time (a noisy point) is held at it.
  burst_speed slow{{{0.001, 0.003}}, 1.0};
  CHECK(slow.wall_seconds(0.002) == doctest::Approx(0.002));
}

TEST_CASE("a device's burst, its all-reduce work and the ring step floor survive JSON, and bad ones are named") {
  profile p = sample_profile();
  p.devices[0].burst = {{{0.001, 0.001}, {0.002, 0.003}}, 2.0};
  json j = to_json(p);
  CHECK(j["devices"][0]["burst"]["sustained_over_first"] == 2.0);
  CHECK_FALSE(j["devices"][1].contains("burst"));
  CHECK(to_json(profile_from_json(j)) == j);
  CHECK_FALSE(j.contains("ring_step_floor"));  // 0, uncalibrated, is left out
  p.ring_step_floor = 2e-4;
  CHECK(profile_from_json(to_json(p)).ring_step_floor == 2e-4);
  json bad = j;
  bad["ring_step_floor"] = -1;
  CHECK(error_of(bad).find("profile.ring_step_floor: must be >= 0") == 0);
  bad = j;
  bad["devices"][0]["burst"]["points"][1] = {0.0005, 0.004};
  CHECK(error_of(bad) == "profile.devices[0].burst.points[1]: must be positive and rise from the point before");
  bad = j;
  bad["devices"][0]["burst"]["points"][0] = "fast";
  CHECK(error_of(bad) == "profile.devices[0].burst.points[0]: must be [work, wall] seconds");
  // A device's measured all-reduce work per byte, left out where unmeasured.
  CHECK_FALSE(j["devices"][0].contains("reduce_seconds_per_byte"));
  p.devices[0].reduce_seconds_per_byte = 1.5e-8;
  CHECK(profile_from_json(to_json(p)).devices[0].reduce_seconds_per_byte == 1.5e-8);
  CHECK(profile_from_json(to_json(p)).devices[1].reduce_seconds_per_byte == 0);
  bad = j;
  bad["devices"][0]["reduce_seconds_per_byte"] = -1e-9;
  CHECK(error_of(bad).find("profile.devices[0].reduce_seconds_per_byte: must be >= 0") == 0);
  bad = j;
  bad["devices"][0]["burst"]["sustained_over_first"] = 0;
  CHECK(error_of(bad).find("profile.devices[0].burst.sustained_over_first: must be > 0") == 0);
}

TEST_CASE("one timing object applies to every layer") {
  json j = to_json(sample_profile());
  j["devices"][1]["layers"] = {{"prefill", 0.01}, {"decode", {{1, 0.02}, {100, 0.04}}}};
  profile p = profile_from_json(j);
  REQUIRE(p.devices[1].layers.size() == p.layers.size());
  CHECK(p.devices[1].layers[4].decode.at(50.5) == doctest::Approx(0.03));
}

TEST_CASE("bad profiles get errors naming the field") {
  json good = to_json(sample_profile());
  json j = good;
  j["devices"][1].erase("memory_bytes");
  CHECK(error_of(j) == "profile.devices[1].memory_bytes: missing field");
  j = good;
  j["links"]["default"]["bandwidth"] = 0;
  CHECK(error_of(j).find("profile.links.default.bandwidth: must be > 0") == 0);
  j = good;
  j["links"]["pairs"] = {{{"a", 0}, {"b", 1}, {"bandwidth", -5}}};
  CHECK(error_of(j).find("profile.links.pairs[0,1].bandwidth: must be > 0") == 0);
  j = good;
  j["devices"][0]["layers"].erase(0);
  CHECK(error_of(j) == "profile.devices[0].layers: has 4 entries, the model has 5 layers");
  j = good;
  j["devices"][1]["state_scale"] = 0;
  CHECK(error_of(j).find("profile.devices[1].state_scale: must be > 0") == 0);
  j = good;
  j["source"] = 7;
  CHECK(error_of(j).find("profile.source: device index 7 out of range") == 0);
  j = good;
  j["model"]["layers"][2]["weight_bytes"] = "big";
  CHECK(error_of(j).find("profile.model.layers[2].weight_bytes: must be a number") == 0);
  CHECK(error_of(good).empty());
}

TEST_CASE("unreadable files say which file and why") {
  std::string path = temp_path("broken.json");
  std::ofstream(path) << "{ not json";
  CHECK_THROWS_WITH_AS(load_profile(path), doctest::Contains((path + ": not valid JSON").c_str()), profile_error);
  std::remove(path.c_str());
  CHECK_THROWS_WITH_AS(load_profile(temp_path("absent.json")), doctest::Contains("cannot open"),
                       profile_error);
}
