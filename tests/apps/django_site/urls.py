from django.urls import include, path

from . import views

urlpatterns = [
    path("health", views.health),
    path("api/", include("tests.apps.django_site.api_urls")),
]
