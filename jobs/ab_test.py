"""A shadow and A/B experiment on Ray Serve, driven by the simulated user population.

    python jobs/ab_test.py --config configs/local.yaml
    ray job submit --working-dir . -- python jobs/ab_test.py --config configs/local.yaml \
        --set ab.simulation.budget_s=600

Deploys the arms of the `ab` section behind the traffic-splitting ingress (clients ask for
ab.public_model), sends the simulated users' questions and feedback through real HTTP until the
decision rule decides or the budget ends, writes the report (<home>/ab/<experiment>/) and logs it to
the experiment's MLflow run. `app ab dashboard` shows the results page.
"""

from app.entry import job_main

if __name__ == "__main__":
    job_main("ab_test")
