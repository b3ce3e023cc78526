"""The fleet scenario's figures count what they claim: an injection that times out stays counted as
never converged, and a live node marked dead before the churn phase counts as a false death.

Small fleets and short runs; each test makes the one event it checks happen on purpose."""

from mesh.sim.scenario import FleetScenario

NEVER_ANNOUNCED = "sha256:" + "f" * 64


class OneLostInjection(FleetScenario):
    """The first injection names an image its origin never announces: it cannot converge, so it
    times out (120 simulated seconds) during the churn phase."""

    lost = False

    def _inject(self) -> tuple[float, str, str]:
        if self.lost:
            return super()._inject()
        self.lost = True
        return self.net.now, self.net.live()[0].core.node_id, NEVER_ANNOUNCED


class IsolatedInSteadyState(FleetScenario):
    """One node is cut off from the rest for the whole steady phase (before the churn phase),
    while its process stays up: whoever marks it dead, or is marked dead by it, died falsely."""

    isolated = ""

    def _steady_phase(self) -> None:
        self.isolated = next(iter(self.net.nodes))
        others = [a for a in self.net.nodes if a != self.isolated]
        self.net.partition([[self.isolated], others])
        super()._steady_phase()
        self.net.heal()


def test_an_injection_that_times_out_stays_counted_as_never_converged():
    # 5 minutes: the churn phase (75-225 s) outlasts the 120 s an injection is given.
    results = OneLostInjection(5, loss=0.0, seed=3, minutes=5).run()
    assert results.undelivered_injections == 1  # the lost one; every real injection converged
    assert len(results.rounds_to_converge) > 10


def test_a_false_death_before_the_churn_phase_is_counted():
    scenario = IsolatedInSteadyState(5, loss=0.0, seed=3, minutes=2)
    results = scenario.run()
    isolated = scenario.net.nodes[scenario.isolated].core.node_id
    assert isolated in results.false_dead  # marked dead in steady state while up
    assert FleetScenario(5, loss=0.0, seed=3, minutes=2).run().false_dead == set()  # only by the cut
